"""One description per compression method, and the registry of them.

Every method module (merge.py, mstm.py, tome.py, hourglass.py, algm.py,
mpm.py) declares its reducer, its config class and its :class:`MethodSpec`
and registers the spec (``register(SPEC)``); the package's ``__init__``
imports every method module, so every method is registered before anything
asks. This module imports none of them. Everything outside ``compression/``
asks the registry (:func:`method_spec`, :func:`method_names`) instead of
naming a method: the config parser, the study and benchmark knobs, the
visualiser, the export tool, checkpoint messages
(tests/test_methods.py holds that no other code names one).

Adding a method therefore means one module (reducer, config class, knob,
spec, ``register(SPEC)``) and its line in the package's ``__init__``.

Two flags say how a method's merges relate to the image:

* ``fixed_shapes``: every image keeps the same number of tokens in every
  block (batches stay rectangular, an ONNX graph can hold it);
* ``per_image_merges``: which tokens merge depends on the image (drawing
  the merges needs the image). Prune and Merge with content-aware windows
  has fixed shapes and per-image merges; with static windows neither
  changes per image.

How a method is calibrated to a FLOPs budget follows from them and from
``structures``: a method with structures (Prune and Merge) searches one per
knob value from token scores; a method without fixed shapes is calibrated on
its FLOPs averaged over images (they depend on the image and the weights);
every other method on the counted FLOPs of its model at the knob
(:attr:`MethodSpec.calibration`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

# What ``compression=dict(...)`` without ``method`` means.
DEFAULT_METHOD = 'pm'

# Texts that several methods' descriptions share.
SORTS_PER_IMAGE = ('it picks its merges per image with a stable sort, which '
                   "torch's ONNX exporter cannot translate "
                   '(docs/weights_export_visualize.md)')
SOURCE_MAP_NOTE = 'merges depend on the image: this is its source map'


@dataclass(frozen=True)
class ModelShape:
    """What a method's knob depends on: ``num_tokens`` patch tokens of the
    input grid (class token not counted), ``num_layers`` blocks,
    ``embed_dims`` channels (None: not known; a method whose settings need
    it says so)."""

    num_tokens: int
    num_layers: int
    embed_dims: Optional[int] = None


@dataclass(frozen=True)
class StudyVariant:
    """One variant of a method in the quality study: its row ``name`` and
    ``label``, its plot ``marker``, the knob ``options`` it sets (every
    other one its config class's default) and, for a method with
    structures, the centre ``placement`` and ``ranking`` (None: the
    project's default, the mode's default)."""

    name: str
    label: str
    marker: str
    options: Dict[str, object] = field(default_factory=dict)
    placement: Optional[str] = None
    ranking: Optional[str] = None


@dataclass(frozen=True)
class BenchmarkVariant:
    """One row of the benchmark's reference method at a keep rate: the
    ``settings`` it writes into the config's ``compression`` dict, its
    ``label`` (formatted with ``keep_rate``) and whether the benchmark runs
    it when no rows are named (``by_default``)."""

    name: str
    settings: Dict[str, object]
    label: str
    by_default: bool = False


@dataclass(frozen=True)
class MethodSpec:
    """Everything the tools need to know about one compression method.

    ``name``: the ``compression=dict(method=name)`` key; ``label``: its name
    in tables, plots and pictures; ``config``: its config class (parses the
    dict, builds the reducer).

    The knob: one integer whose FLOPs are monotone in it, what the study
    and the benchmark calibrate to a budget. ``knob`` says in words what it
    sets; ``knob_range(shape)`` gives its inclusive range,
    ``knob_compression(knob, shape, **options)`` the backbone's
    ``compression=`` dict at a value (``options``: the method's own
    settings, e.g. Prune and Merge's ``rule``), ``knob_text(knob, shape)``
    the value in words for a table.

    ``fixed_shapes`` and ``per_image_merges``: see the module docstring.
    ``exports``: whether ``tools/export_onnx.py`` writes a working graph
    with the current torch (else ``no_export`` says why; a method without
    fixed shapes is refused before trying). ``structures``: its static
    structures are searched from token scores (``tools/prune.py``,
    ``set_structures``). ``marker``: its matplotlib marker.
    ``picture_note``: what a drawing of its per-image merges shows.
    ``discrete``: its knob has a few settings whose GFLOPs lie far apart (a
    schedule); the study and the benchmark take the nearest setting at any
    distance from a budget and report the GFLOPs it has, instead of
    calling the budget out of reach.

    ``study_variants``: its variants in the quality study (none: one,
    named and labelled as the method, every option its default).
    ``benchmark_variants``: its rows in the benchmark when it is the
    reference the peers are matched to (:data:`DEFAULT_METHOD`), and
    ``benchmark_fallback(num_layers)`` their ``compression=`` dict for a
    config that compresses nothing.
    """

    name: str
    label: str
    knob: str
    knob_range: Callable[[ModelShape], Tuple[int, int]]
    knob_compression: Callable[..., dict]
    knob_text: Callable[[int, ModelShape], str]
    fixed_shapes: bool
    per_image_merges: bool
    exports: bool
    no_export: str = ''
    structures: bool = False
    marker: str = 'o'
    picture_note: str = ''
    discrete: bool = False
    config: Optional[type] = None
    study_variants: Tuple[StudyVariant, ...] = ()
    benchmark_variants: Tuple[BenchmarkVariant, ...] = ()
    benchmark_fallback: Optional[Callable[[int], dict]] = None

    def study_rows(self) -> Tuple[StudyVariant, ...]:
        """Its study variants (one named as the method if it lists
        none)."""
        return self.study_variants or (StudyVariant(self.name, self.label,
                                                    self.marker), )

    def __post_init__(self):
        if self.exports and not self.fixed_shapes:
            raise ValueError(f'{self.name}: a method whose shapes depend on '
                             'the image cannot export')
        if not self.exports and not self.no_export:
            raise ValueError(f'{self.name}: say why it does not export '
                             '(no_export)')

    @property
    def calibration(self) -> str:
        """How the study and the benchmark bring it to a FLOPs budget."""
        if self.structures:
            return ('structures searched from token scores at each knob '
                    'value, counted FLOPs')
        if not self.fixed_shapes:
            return ('FLOPs averaged over images, counted with the weights '
                    'loaded (they depend on the image and the weights)')
        return 'counted FLOPs of the model at each knob value'


_METHODS: Dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Register ``spec`` as it is (its config class gets ``method =
    spec.name``); a second spec under the same name is refused."""
    if spec.config is None:
        raise ValueError(f'{spec.name}: a method is registered with its '
                         'config class (MethodSpec.config)')
    if spec.name in _METHODS and _METHODS[spec.name] is not spec:
        raise ValueError(f'compression method {spec.name!r} is '
                         'registered twice')
    spec.config.method = spec.name
    _METHODS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Forget method ``name`` (a test's own method, once the test is
    done)."""
    del _METHODS[name]


def _registered() -> Dict[str, MethodSpec]:
    return _METHODS


def method_names() -> List[str]:
    """Every registered method's name, in registration order."""
    return list(_registered())


def method_specs() -> List[MethodSpec]:
    """Every registered method, in registration order."""
    return list(_registered().values())


def method_spec(name: str) -> MethodSpec:
    """The description of method ``name``."""
    methods = _registered()
    if name not in methods:
        raise ValueError(f'compression method must be one of '
                         f'{tuple(methods)}, got {name!r}')
    return methods[name]


def peer_specs() -> List[MethodSpec]:
    """Every method but the default one (the peers it is compared with)."""
    return [s for s in method_specs() if s.name != DEFAULT_METHOD]


# ------------------------------------------------ shared knob pieces
# The one home of "which blocks are compressed": every block from
# FIRST_COMPRESSED_BLOCK on, for the knobs of every method (the released
# Segmenter configs likewise leave their first blocks dense); a study
# variant or a benchmark row that differs says its first block
# (merge.py: first_block=0, BENCHMARK_FIRST_BLOCK).
FIRST_COMPRESSED_BLOCK = 1


def compressible_blocks(num_layers: int,
                        first_block: int = FIRST_COMPRESSED_BLOCK
                        ) -> List[int]:
    """The blocks compressed: ``first_block`` to the last."""
    if num_layers < 2:
        raise ValueError(f'the study needs at least 2 blocks, got '
                         f'{num_layers}')
    return list(range(first_block, num_layers))


def keep_rate_for(count: int, num_tokens: int) -> float:
    """A keep rate whose ``int(rate * N)`` is exactly ``count`` (k / N
    itself can round down to k - 1 in floating point)."""
    if not 1 <= count <= num_tokens:
        raise ValueError(f'count must be in [1, {num_tokens}], got {count}')
    return min(1.0, (count + 0.5) / num_tokens)


def no_options(name: str, options: dict) -> None:
    """Refuse knob options for a method that has none."""
    if options:
        raise ValueError(f'method {name!r} takes no knob options, got '
                         f'{sorted(options)}')


__all__ = ['DEFAULT_METHOD', 'MethodSpec', 'ModelShape', 'StudyVariant',
           'BenchmarkVariant', 'register', 'unregister',
           'method_names', 'method_specs', 'method_spec', 'peer_specs',
           'FIRST_COMPRESSED_BLOCK', 'compressible_blocks', 'keep_rate_for', 'no_options',
           'config_default']


def config_default(config: type, name: str):
    """The default of field ``name`` of a method's config class (the one
    default every layer takes)."""
    for f in dataclasses.fields(config):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    raise ValueError(f'{config.__name__} has no default for {name!r}')
