"""Content-aware windows in the backbone: layer and span units with
outputs inside a span, sparse = per-image matrices in values and
gradients, checkpoints refused by a model of the other assignment,
torch.compile without graph breaks, and the per-image source map."""
import pytest
import torch
import torch._dynamo

import mmseg_pm.models  # noqa: F401
from tests.helpers import (assert_compiled_unit_matches_eager,
                           pruned_structure, randomise, tiny_pm)

UNITS = {'layer': dict(mode='layer', layers=[1, 2, 3]),
         'span': dict(mode='span', spans=[(0, 1), (2, 3)])}


def compressed(mode='span', impl='sparse', assign='content',
               reconstruct='residual', **kwargs):
    """A tiny randomised backbone with pruned and merged tokens in every
    unit, an output after every block (inside the spans too)."""
    model = randomise(tiny_pm(
        compression=dict(UNITS[mode], keep_rate=0.5, impl=impl,
                         reconstruct=reconstruct, assign=assign, **kwargs),
        out_indices=(0, 1, 2, 3)))
    model.set_structures([pruned_structure(seed=i)
                          for i in range(len(model.compressed_units))])
    return model


@pytest.mark.parametrize('reconstruct', ['residual', 'pinv'])
@pytest.mark.parametrize('mode', ['layer', 'span'])
def test_sparse_equals_dense_matrices_in_value_and_gradient(mode,
                                                            reconstruct):
    sparse = compressed(mode, 'sparse', reconstruct=reconstruct).train()
    dense = compressed(mode, 'dense', reconstruct=reconstruct).train()
    dense.load_state_dict(sparse.state_dict())
    x = torch.randn(2, 3, 48, 80)
    outs = [model(x) for model in (sparse, dense)]
    for a, b in zip(*outs):
        assert a.shape == (2, 32, 3, 5)
        assert (a - b).abs().max() <= 1e-5
    for out in outs:
        sum(o.square().mean() for o in out).backward()
    dense_params = dict(dense.named_parameters())
    for name, p in sparse.named_parameters():
        assert (p.grad - dense_params[name].grad).abs().max() <= 1e-5, name
    comp = sparse.token_compressors['2']
    assert (comp.merge_weight.grad[comp.group >= 0] != 0).any()


def test_content_windows_change_the_output_and_k1_does_not():
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        static = compressed(assign='static')
        # static merges by the structure's score weights; content by means
        for comp in static.token_compressors.values():
            s = comp.structure()
            s.weight[s.group >= 0] = 1.0
            comp.set_structure(s)
        ref = static(x)
        near = compressed(neighbourhood=1)(x)
        wide = compressed(neighbourhood=3)(x)
    for a, b, c in zip(ref, near, wide):
        assert (a - b).abs().max() <= 1e-5
    assert any((a - c).abs().max() > 1e-3 for a, c in zip(ref, wide))


def test_checkpoint_of_one_assignment_is_refused_by_the_other():
    content, static = compressed(), compressed(assign='static')
    with pytest.raises(ValueError, match="made with assign='content' but "
                       "this model uses assign='static'.*set compression "
                       "assign='content'"):
        static.load_state_dict(content.state_dict())
    with pytest.raises(ValueError, match="made with assign='static' but "
                       "this model uses assign='content'"):
        content.load_state_dict(static.state_dict())
    # checkpoints from before content-aware windows carry no key: static
    old = {k: v for k, v in static.state_dict().items()
           if not k.endswith('.content')}
    static.load_state_dict(old)
    with pytest.raises(ValueError, match="made with assign='static'"):
        content.load_state_dict(old)
    # another neighbourhood size reads the same weights
    compressed(neighbourhood=5).load_state_dict(content.state_dict())


@pytest.mark.parametrize('value, match', [('soft', 'assign must be one of'),
                                          (2, 'neighbourhood must be')])
def test_bad_assign_settings_are_refused(value, match):
    key = 'assign' if isinstance(value, str) else 'neighbourhood'
    with pytest.raises(ValueError, match=match):
        tiny_pm(compression=dict(mode='layer', layers=[1], **{key: value}))


@pytest.mark.parametrize('reconstruct', ['residual', 'pinv'])
def test_whole_content_backbone_traces_without_graph_breaks(reconstruct):
    model = compressed(reconstruct=reconstruct).eval()
    x = torch.randn(1, 3, 48, 80)
    torch._dynamo.reset()
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compiled_content_unit_matches_eager():
    model = compressed().eval()
    assert_compiled_unit_matches_eager(model.token_compressors['2'],
                                       model.layers[2])


def test_source_map_is_each_images_assignment():
    model = compressed().eval()
    reducer = model.reducer
    x = torch.randn(3, 3, 48, 80)
    reducer.trace_source = True
    with torch.no_grad():
        model(x)
    reducer.trace_source = False
    source = reducer.sources[2]
    comp = model.token_compressors['2']
    assert source.shape == (3, 16)
    assert torch.equal(source[:, 1:] < 0, (comp.group < 0).expand(3, -1))
    assert torch.equal(source[:, 1:][:, comp.is_centre],
                       (torch.arange(comp.num_groups) + 1).expand(3, -1))
    assert not all(torch.equal(source[0], s) for s in source)


def similarity_pairs(structure, k):
    """(merged token, candidate window) pairs the batched product computes:
    every merged token times the largest number of distinct windows among
    any merged token's kept k x k neighbours and its own, counted by a loop
    over the grid."""
    h, w = structure.grid
    centre = set(structure.centre.tolist())
    widths = []
    for p in range(h * w):
        if structure.group[p] < 0 or p in centre:
            continue
        y, x = divmod(p, w)
        near = {int(structure.group[yy * w + xx])
                for yy in range(y - k // 2, y + k // 2 + 1)
                for xx in range(x - k // 2, x + k // 2 + 1)
                if 0 <= yy < h and 0 <= xx < w}
        widths.append(len((near - {-1}) | {int(structure.group[p])}))
    return len(widths) * max(widths)


@pytest.mark.parametrize('reconstruct', ['residual', 'pinv'])
@pytest.mark.parametrize('impl', ['sparse', 'dense'])
def test_flops_count_the_assignment(impl, reconstruct):
    """count_flops sees 2 C per (merged token, candidate window) pair, the
    pairs whose similarity runs; the benchmark's formula agrees with it."""
    from mmseg_pm.benchmark import analytic_backbone_flops
    from mmseg_pm.utils.flops import count_flops

    x = torch.randn(1, 3, 48, 80)
    flops = {k: count_flops(compressed(impl=impl, reconstruct=reconstruct,
                                       neighbourhood=k), x) for k in (1, 3)}
    extra = sum(similarity_pairs(pruned_structure(seed=i), 3)
                - similarity_pairs(pruned_structure(seed=i), 1)
                for i in range(2))  # two units
    assert extra > 0
    assert flops[3] - flops[1] == 2 * 32 * extra  # width 32
    model = compressed(impl=impl, reconstruct=reconstruct)
    assert analytic_backbone_flops(model, (48, 80)) == flops[3]
