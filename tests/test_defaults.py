"""One default per question, the same at every layer: the config class's.

A question is a setting a user may leave out (Prune and Merge's window
rule, reconstruction, window assignment, ...; every other method's own
settings). Its answer is the default of the method's config class
(mmseg_pm.compression.config); every other layer that has a default for it
(the reducer and unit classes, the structure builders, the study's
variants, the benchmark's reference row, the demo, the prune tool) must
give the same one, or take it from there. The centre placement and the
ranking are not config settings: their one default lives in
mmseg_pm.compression.search.
"""
import dataclasses
import inspect

from mmseg_pm.compression.registry import (DEFAULT_METHOD, ModelShape,
                                           config_default, method_spec,
                                           method_specs)


def defaults_of(fn) -> dict:
    """Parameter -> default of a function or class (its __init__)."""
    return {name: p.default for name, p in
            inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def config_defaults(config) -> dict:
    return {f.name: config_default(config, f.name)
            for f in dataclasses.fields(config)
            if f.default is not dataclasses.MISSING
            or f.default_factory is not dataclasses.MISSING}


def disagreements(layer: str, defaults: dict, truth: dict) -> list:
    return [f'{layer}: {k}={defaults[k]!r}, the config class says '
            f'{truth[k]!r}' for k in sorted(set(defaults) & set(truth))
            if defaults[k] != truth[k]]


def reducer_class(spec):
    shape = ModelShape(64, 4, 32)
    lo, hi = spec.knob_range(shape)
    config = spec.config.from_dict(
        spec.knob_compression(max(lo, (lo + hi) // 2, 1), shape), 4)
    return type(config.build_reducer((8, 8), 32, 1, (64, 64)))


def test_every_reducer_defaults_to_its_config_class():
    """A reducer built without a setting gives it the config's default.
    (Prune and Merge's TokenCompressor and PruneAndMerge live in merge.py,
    which is being split; until then they may disagree, and this test
    says so.)"""
    from mmseg_pm.compression.merge import TokenCompressor

    wrong = []
    for spec in method_specs():
        truth = config_defaults(spec.config)
        cls = reducer_class(spec)
        wrong += disagreements(cls.__name__, defaults_of(cls), truth)
        if spec.name == DEFAULT_METHOD:
            wrong += disagreements('TokenCompressor',
                                   defaults_of(TokenCompressor), truth)
    assert not wrong, (
        'defaults that disagree with the config class (merge.py: take '
        "PMConfig's defaults when it is split, issue 24): "
        + '; '.join(wrong))


def test_every_other_layer_takes_the_config_classes_defaults():
    from mmseg_pm.apis.knobs import METHODS, Method
    from mmseg_pm.benchmark.variants import REFERENCE, reference_variants
    from mmseg_pm.cli import prune as prune_tool
    from mmseg_pm.compression.structure import (build_structure,
                                                lattice_structure)
    from mmseg_pm.demo import DemoSettings

    spec = method_spec(DEFAULT_METHOD)
    truth = config_defaults(spec.config)
    wrong = []
    for fn in (build_structure, lattice_structure):
        wrong += disagreements(fn.__name__, defaults_of(fn), truth)
    demo = {k: v for k, v in dataclasses.asdict(DemoSettings()).items()
            # the demo's own choice: more compression than the configs
            if k not in ('keep_rate', 'prune_rate')}
    wrong += disagreements('DemoSettings', demo, truth)
    wrong += disagreements(f'benchmark row {REFERENCE!r}',
                           reference_variants()[REFERENCE], truth)
    bare = Method('bare', 'bare', DEFAULT_METHOD, 'o')
    for name in ('mode', 'rule', 'reconstruct', 'assign', 'prune_rate'):
        wrong += disagreements('a study variant', {name: bare.option(name)},
                               truth)
    # the study variant named the default takes every config default; its
    # one option is the layout (every block compressed)
    [default] = [m for m in METHODS.values() if 'the default' in m.label]
    assert default.method == DEFAULT_METHOD and default.ranking is None
    assert default.options == {'first_block': 0}
    # the prune tool's compression options: the config's, no default
    parsed = prune_tool.build_parser().parse_args(['c.py', 'w.pth', '--out',
                                                   'o.pth'])
    for name in ('keep_rate', 'prune_rate', 'rule', 'reconstruct', 'assign',
                 'neighbourhood'):
        assert getattr(parsed, name) is None, name
    assert not wrong, '; '.join(wrong)


def test_placement_and_ranking_have_one_default():
    from mmseg_pm.apis.knobs import Method
    from mmseg_pm.apis import prune_segmentor
    from mmseg_pm.apis.prune import default_ranking
    from mmseg_pm.cli import prune as prune_tool
    from mmseg_pm.compression.search import (DEFAULT_PLACEMENT,
                                             place_centres,
                                             search_structures,
                                             select_tokens)
    from mmseg_pm.demo import DemoSettings

    placements = {
        'place_centres': defaults_of(place_centres)['placement'],
        'search_structures': defaults_of(search_structures)['placement'],
        'prune_segmentor': defaults_of(prune_segmentor)['placement'],
        'tools/prune.py': prune_tool.build_parser().parse_args(
            ['c.py', 'w.pth', '--out', 'o.pth']).placement,
        'DemoSettings': DemoSettings().placement,
        'a study variant': Method('bare', 'bare', DEFAULT_METHOD,
                                  'o').placement}
    assert placements == dict.fromkeys(placements, DEFAULT_PLACEMENT)
    layer_mode = default_ranking(config_default(
        method_spec(DEFAULT_METHOD).config, 'mode'))
    rankings = {'select_tokens': defaults_of(select_tokens)['ranking'],
                'search_structures': defaults_of(search_structures)[
                    'ranking'],
                'DemoSettings': DemoSettings().ranking}
    assert rankings == dict.fromkeys(rankings, layer_mode)
