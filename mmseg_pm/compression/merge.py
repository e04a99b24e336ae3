"""Prune and Merge as a token reducer (:class:`PruneAndMerge`): one
:class:`~.unit.TokenCompressor` per unit, what its merges cost
(:func:`unit_merge_flops`), and its description (:data:`SPEC`) with its
knob.

The knob: the centres per unit, ``k`` of the N patch tokens (before the
global ranking shares them out among the layers; the placement moves
centres, never their counts, so every placement has the same FLOPs). Its
options are the compression settings a study variant changes (``mode``,
``rule``, ``reconstruct``, ``assign``, ``prune_rate``); each one left out
takes :class:`PMConfig`'s default.

The unit's arithmetic lives in :mod:`.unit`, the content-aware assignment
in :mod:`.content`, the low-level operations in :mod:`.ops`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Dict, List, Optional, Sequence, Tuple

from torch import Tensor, nn

from mmseg_pm.utils.errors import UsageError

from .config import (block_index, check_flag, check_keys, check_number,
                     check_span, index_list)
from .reducer import STRUCTURES_NAME, TokenReducer
from .registry import (DEFAULT_METHOD, FIRST_COMPRESSED_BLOCK,
                       BenchmarkVariant, MethodSpec, ModelShape, StudyVariant,
                       compressible_blocks, config_default, keep_rate_for,
                       register)
from .structure import (ASSIGN_RULES, DEFAULT_RULE, CompressionStructure,
                        lattice_structure)
from .unit import (DEFAULT_ASSIGN, DEFAULT_IMPL, DEFAULT_NEIGHBOURHOOD,
                   DEFAULT_RECONSTRUCT, TokenCompressor, check_unit_settings)

MODES = ('layer', 'span')


def unit_merge_flops(num_tokens: int, num_prefix: int, num_groups: int,
                     embed_dims: int, reconstructs: int, impl: str,
                     reconstruct: str, similarity_pairs: int = 0) -> int:
    """FLOPs of one unit's merge and ``reconstructs`` reconstructions of
    ``num_tokens`` patch tokens, as :func:`mmseg_pm.utils.flops.count_flops`
    counts them: the sparse segment sum (2 per source element, prefix
    tokens included), the dense formulation's (K x N) and (N x K)
    products; gathers and scales are element-wise (not counted).
    Content-aware windows (``similarity_pairs`` > 0: the (token, candidate
    window) pairs of the unit) add 2 C per pair, the window totals (or,
    pinv, squared weights) summed per image as one more channel, and,
    dense, products with the prefix tokens' rows and columns."""
    n, c = num_tokens, embed_dims
    if similarity_pairs:
        similarity = 2 * similarity_pairs * c
        if impl == 'dense':
            slots, tokens = num_prefix + num_groups, num_prefix + n
            return similarity + 2 * slots * tokens * c * (1 + reconstructs)
        return similarity + 2 * (num_prefix + n) * (c + 1)
    if impl == 'sparse':
        return 2 * (num_prefix + n) * c
    return 2 * num_groups * n * c * (1 + reconstructs)


class PruneAndMerge(nn.ModuleDict, TokenReducer):
    """Prune and Merge as a :class:`TokenReducer`: one
    :class:`TokenCompressor` per unit, keyed by the unit's first block (the
    keys of the checkpoints: ``token_compressors.<first>.*``, its
    ``state_dict_name`` being :data:`~.reducer.STRUCTURES_NAME`).

    A unit (first, last) merges before its first block, runs its blocks on
    the centres and reconstructs after its last; an output inside a unit is
    reconstructed from the merged stream. Its structures are static; with
    content-aware windows its merges follow the image.
    """

    method = 'pm'
    state_dict_name = STRUCTURES_NAME

    def __init__(self, units: Sequence[Tuple[int, int]],
                 structure: CompressionStructure, num_prefix: int = 1,
                 impl: str = DEFAULT_IMPL, trainable: bool = True,
                 reconstruct: str = DEFAULT_RECONSTRUCT,
                 assign: str = DEFAULT_ASSIGN,
                 neighbourhood: int = DEFAULT_NEIGHBOURHOOD,
                 proportional_attention: bool = False):
        super().__init__({str(first): TokenCompressor(
            structure, impl, trainable, reconstruct, assign, neighbourhood)
            for first, _ in units})
        self.proportional_attention = proportional_attention
        self.units = [(int(a), int(b)) for a, b in units]
        self.unit_last = dict(self.units)  # first block -> last block
        self.num_prefix = num_prefix
        # grid -> first block -> unit derived for that grid (not saved)
        self.__dict__['_derived'] = {}

    def compressor(self, first: int) -> TokenCompressor:
        return self[str(first)]

    def compressors(self, grid: Tuple[int, int]) -> Dict[int, TokenCompressor]:
        """Every unit's compressor for a ``grid`` of patch tokens: its own
        on the grid its structures were made for; on any other, units whose
        structures the same rule makes for that grid
        (:func:`~.search.derive_structure`), made once per grid and kept
        (not saved: they follow the saved ones). Their weights are the
        new structures' initial ones (fine-tuned weights belong to their
        grid's tokens)."""
        grid = (int(grid[0]), int(grid[1]))
        first_unit = self.compressor(self.units[0][0])
        if grid == first_unit.grid_size:
            return {a: self.compressor(a) for a, _ in self.units}
        derived = self._derived.get(grid)
        if derived is None:
            from .search import derive_structure
            derived = {}
            for first, _ in self.units:
                own = self.compressor(first)
                unit = TokenCompressor(
                    derive_structure(own.structure(), grid), own.impl, False,
                    own.reconstruct_mode, own.assign, own.neighbourhood)
                derived[first] = unit.to(own.merge_weight)
            self._derived[grid] = derived
        return derived

    def structures(self) -> List[CompressionStructure]:
        """The structure of every unit, in block order."""
        return [self.compressor(a).structure() for a, _ in self.units]

    def set_structures(self, structures: Sequence[CompressionStructure]
                       ) -> None:
        """Install one structure per unit (in block order)."""
        if len(structures) != len(self.units):
            raise ValueError(f'got {len(structures)} structures for '
                             f'{len(self.units)} compressed units '
                             f'{self.units}')
        for (first, _), structure in zip(self.units, structures):
            self.compressor(first).set_structure(structure)
        self._derived.clear()

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._derived.clear()  # the loaded structures make them anew

    def _apply(self, fn, *args, **kwargs):
        self._derived.clear()
        return super()._apply(fn, *args, **kwargs)

    # ------------------------------------------------------------ forward
    def start(self, x: Tensor, hw: Tuple[int, int]):
        # the units for this grid, and (last block, compressor, context,
        # bias) while inside one
        return self.compressors(hw), None

    def run_block(self, i: int, block: nn.Module, x: Tensor, state):
        units, inside = state
        if i in self.unit_last:
            compressor = units[i]
            batch = x.shape[0]
            x, context = compressor.merge(x, self.num_prefix)
            if self.trace_source:  # the source map is only built on request
                self.record_source(i, compressor.source(
                    batch, self.num_prefix, context))
            bias = compressor.attention_bias(
                context, self.num_prefix, x.dtype) \
                if self.proportional_attention else None
            inside = (self.unit_last[i], compressor, context, bias)
        x = block(x) if inside is None or inside[3] is None else \
            block(x, inside[3])
        if inside is not None and i == inside[0]:
            _, compressor, context, _ = inside
            return compressor.reconstruct(x, context,
                                          self.num_prefix), (units, None)
        return x, (units, inside)

    def full_grid(self, i: int, x: Tensor, state) -> Tensor:
        _, inside = state
        if inside is None:
            return x
        _, compressor, context, _ = inside
        return compressor.reconstruct(x, context, self.num_prefix)

    # ------------------------------------------------------------ questions
    def blocks(self, num_layers: int) -> List[int]:
        return [i for a, b in self.units for i in range(a, b + 1)]

    def merging_blocks(self) -> List[int]:
        return [a for a, _ in self.units]

    def tokens_per_block(self, num_tokens: int, num_layers: int) -> List[int]:
        tokens = [num_tokens] * num_layers
        for first, last in self.units:
            for i in range(first, last + 1):
                tokens[i] = self.num_prefix + self.compressor(first).num_groups
        return tokens

    def image_dependent(self, block: int) -> bool:
        """Content-aware windows: each image its own."""
        return self.compressor(block).assign == 'content'

    def merge_flops(self, grid: Tuple[int, int], embed_dims: int,
                    out_indices: Sequence[int]) -> int:
        """Each unit's merge and its reconstructions: after its last block
        and at every output inside it (:func:`unit_merge_flops`)."""
        total = 0
        for first, last in self.units:
            comp = self.compressor(first)
            reconstructs = 1 + sum(1 for i in out_indices if first <= i < last)
            total += unit_merge_flops(
                grid[0] * grid[1], self.num_prefix, comp.num_groups,
                embed_dims, reconstructs, comp.impl, comp.reconstruct_mode,
                comp.num_similarity_pairs)
        return total


@dataclass(frozen=True)
class PMConfig:
    """Which blocks are compressed and how.

    mode 'layer': every block in ``layers`` merges its input, runs on the
    centres and reconstructs its output. mode 'span': each ``(m, r)`` in
    ``spans`` merges once before block m and reconstructs after block r.
    ``units`` is the common form: a list of inclusive ``(first, last)``.
    ``assign`` 'content' (default): per image, each token joins the most
    similar centre among the windows of its ``neighbourhood`` x
    ``neighbourhood`` tokens (docs/content_windows.md); 'static': the
    structure's windows (checkpoints written before content-aware windows).
    """

    method: ClassVar[str]  # set by register()
    mode: str = 'layer'
    units: List[Tuple[int, int]] = field(default_factory=list)
    keep_rate: float = 0.7
    prune_rate: float = 0.0
    rule: str = DEFAULT_RULE
    impl: str = DEFAULT_IMPL
    trainable: bool = True
    reconstruct: str = DEFAULT_RECONSTRUCT
    assign: str = DEFAULT_ASSIGN
    neighbourhood: int = DEFAULT_NEIGHBOURHOOD
    # log window sizes on the attention logits of the merged tokens
    proportional_attention: bool = False

    @classmethod
    def from_dict(cls, cfg: Optional[dict],
                  num_layers: int) -> Optional['PMConfig']:
        if cfg is None:
            return None
        cfg = dict(cfg)
        method = cfg.pop('method', DEFAULT_METHOD)
        if method != cls.method:
            raise UsageError(
                f"compression method={method!r} is not Prune-and-Merge: it "
                'has no static structures (tools/prune.py and '
                "set_structures apply to method='pm' only); parse any "
                'method with parse_compression()')
        known = {'mode', 'layers', 'spans', 'keep_rate', 'prune_rate', 'rule',
                 'impl', 'trainable', 'reconstruct', 'assign',
                 'neighbourhood', 'proportional_attention'}
        check_keys(cfg, known, 'pm')
        mode = cfg.pop('mode', 'layer')
        if mode not in MODES:
            raise UsageError(f'compression mode must be one of {MODES}, '
                             f'got {mode!r}')
        layers = cfg.pop('layers', None)
        spans = cfg.pop('spans', None)
        if layers is None and spans is None:
            given = f'sets {sorted(cfg)} but ' if cfg else ''
            raise UsageError(
                f'compression {given}names no blocks to compress: Prune and '
                'Merge needs layers=[...] (block indices, e.g. layers=[1, 2, '
                "3]) or mode='span' with spans=[(first, last), ...]; for the "
                'dense model leave compression=None')
        if mode == 'layer':
            if spans is not None or layers is None:
                raise UsageError("compression mode 'layer' takes layers=[...] "
                                 '(block indices), not spans')
            units = [(block_index(i, 'layers'), ) * 2
                     for i in index_list(layers, 'layers')]
        else:
            if layers is not None or spans is None:
                raise UsageError("compression mode 'span' takes "
                                 'spans=[(first, last), ...], not layers')
            units = [check_span(span) for span in index_list(spans,
                                                               'spans')]
        if not units:
            raise UsageError('compression lists no layers; use '
                             'compression=None for the dense model')
        units.sort()
        for first, last in units:
            if not 0 <= first <= last < num_layers:
                raise UsageError(
                    f'compressed unit {(first, last)} is outside blocks '
                    f'0..{num_layers - 1} (or has first > last)')
        for (_, last), (first, _) in zip(units, units[1:]):
            if first <= last:
                raise UsageError(f'compressed layers/spans overlap: {units}')
        for key in ('keep_rate', 'prune_rate'):
            if key in cfg:
                cfg[key] = check_number(cfg[key], key)
        for flag in ('trainable', 'proportional_attention'):
            if flag in cfg:
                check_flag(cfg[flag], flag)
        config = cls(mode=mode, units=units, **cfg)
        config.validate()
        return config

    def validate(self) -> None:
        if not 0 < self.keep_rate <= 1:
            raise UsageError(f'keep_rate must be in (0, 1], got '
                             f'{self.keep_rate}')
        if not 0 <= self.prune_rate < 1:
            raise UsageError(f'prune_rate must be in [0, 1), got '
                             f'{self.prune_rate}')
        if self.keep_rate + self.prune_rate > 1:
            raise UsageError(
                f'keep_rate + prune_rate = {self.keep_rate + self.prune_rate}'
                ' > 1: the kept and pruned fractions of the tokens cannot '
                'overlap; lower one of them')
        if self.rule not in ASSIGN_RULES:
            raise UsageError(f'rule must be one of {ASSIGN_RULES}, got '
                             f'{self.rule!r}')
        check_unit_settings(self.impl, self.reconstruct, self.assign,
                            self.neighbourhood)

    def build_reducer(self, grid: Tuple[int, int], embed_dims: int,
                      num_prefix: int, img_size) -> PruneAndMerge:
        """Its reducer, every unit on centres on a regular lattice with
        keep_rate of the tokens (until structures are installed)."""
        default = lattice_structure(grid, self.keep_rate, self.rule)
        return PruneAndMerge(self.units, default, num_prefix,
                             self.impl, self.trainable, self.reconstruct,
                             self.assign, self.neighbourhood,
                             self.proportional_attention)

    def structure_settings(self) -> dict:
        """The settings a structure search reads and a loaded structure
        stands in for (its centres, pruned tokens and windows fix them):
        tools/prune.py records them, and a checkpoint made with others is
        refused rather than running with the config's values ignored."""
        return dict(keep_rate=self.keep_rate, prune_rate=self.prune_rate,
                    rule=self.rule)

    @property
    def layers(self) -> List[int]:
        """Every block that runs on compressed tokens."""
        return [i for a, b in self.units for i in range(a, b + 1)]


# ---------------------------------------------------------------- knob
# the compression settings a knob value may be given with
KNOB_OPTIONS = ('mode', 'rule', 'reconstruct', 'assign', 'prune_rate')
# ... and, written out only where a variant sets it (every other variant's
# dict stays as it was)
EXTRA_KNOB_OPTIONS = ('neighbourhood', 'proportional_attention')
# ... and the one that picks the compressed layers: the first one, 0 (every
# block) or FIRST_COMPRESSED_BLOCK (the default)
LAYOUT_OPTIONS = ('first_block', )
FIRST_BLOCKS = (0, FIRST_COMPRESSED_BLOCK)
# The benchmark's rows for a config that compresses no block: blocks 2 to
# the last (the released ViT-S Prune-and-Merge config's)
BENCHMARK_FIRST_BLOCK = 2


def span_units(num_layers: int) -> List[Tuple[int, int]]:
    """The span-mode units: the compressed blocks in two consecutive
    halves (the first one longer when odd), each with one shared
    structure."""
    blocks = compressible_blocks(num_layers)
    if len(blocks) < 2:
        return [(blocks[0], blocks[-1])]
    cut = blocks[0] + math.ceil(len(blocks) / 2) - 1
    return [(blocks[0], cut), (cut + 1, blocks[-1])]


def _benchmark_fallback(num_layers: int) -> dict:
    return dict(mode='layer',
                layers=compressible_blocks(num_layers, BENCHMARK_FIRST_BLOCK))


def _knob_range(shape: ModelShape) -> Tuple[int, int]:
    return 1, shape.num_tokens


def _knob_compression(knob: int, shape: ModelShape, **options) -> dict:
    known = KNOB_OPTIONS + EXTRA_KNOB_OPTIONS + LAYOUT_OPTIONS
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f'unknown Prune-and-Merge knob options {unknown}; '
                         f'expected some of {known}')
    o = {k: options[k] if k in options else config_default(PMConfig, k)
         for k in KNOB_OPTIONS}
    first_block = options.get('first_block', FIRST_COMPRESSED_BLOCK)
    if first_block not in FIRST_BLOCKS:
        raise ValueError(f'first_block must be one of {FIRST_BLOCKS}, got '
                         f'{first_block!r}')
    if o['mode'] == 'span':
        if first_block != FIRST_COMPRESSED_BLOCK:
            raise ValueError("first_block is an option of mode 'layer'; "
                             'span units start at block '
                             f'{FIRST_COMPRESSED_BLOCK}')
        units = dict(spans=span_units(shape.num_layers))
    else:
        units = dict(layers=compressible_blocks(shape.num_layers,
                                                first_block))
    return dict(mode=o['mode'], **units,
                keep_rate=keep_rate_for(knob, shape.num_tokens),
                prune_rate=o['prune_rate'], rule=o['rule'],
                reconstruct=o['reconstruct'], assign=o['assign'],
                **{k: options[k] for k in EXTRA_KNOB_OPTIONS if k in options})


def _knob_text(knob: int, shape: ModelShape) -> str:
    return f'keep {knob}/{shape.num_tokens} ({knob / shape.num_tokens:.2f})'


def _variant(name: str, label: str, marker: str,
             placement: Optional[str] = None, ranking: Optional[str] = None,
             **options) -> StudyVariant:
    return StudyVariant(name, label, marker, options, placement, ranking)


# The study's variants (each writes out the settings that define it; every
# other one is PMConfig's default; placement None: the project's)
STUDY_VARIANTS = (
    _variant('pm-row', "PM per layer, row rule, authors' pinv", 'o', 'score',
        reconstruct='pinv', assign='static'),
    _variant('pm-nearest', 'PM per layer, nearest rule, pinv', 's', 'score',
        rule='nearest', reconstruct='pinv', assign='static'),
    _variant('pm-span', 'PM span mode, pinv', 'D', 'score', mode='span',
        reconstruct='pinv', assign='static'),
    _variant('random', 'PM random centres, pinv (floor)', 'X', 'random',
        reconstruct='pinv', assign='static'),
    _variant('res-row', 'PM per layer, row rule, residual', 'o', 'score',
        reconstruct='residual', assign='static'),
    _variant('res-span', 'PM span mode, residual', 'D', 'score', mode='span',
        reconstruct='residual', assign='static'),
    _variant('res-random', 'PM random centres, residual, static windows', 'X',
        'random', reconstruct='residual', assign='static'),
    _variant('res-content', 'PM random centres, residual, content-aware windows, '
        'block 0 dense', 'p'),
    _variant('res-content-all', 'PM random centres, residual, content-aware '
        'windows, every block (the default)', 'H', first_block=0),
    _variant('res-content-all-prop', 'PM random centres, residual, '
        'content-aware windows, every block, proportional attention', '<',
        first_block=0, proportional_attention=True),
    _variant('res-content-even', 'PM random centres, residual, content-aware '
        'windows, the same centres in every block', '>', ranking='layer'),
    _variant('res-content-k5', 'PM random centres, residual, content-aware '
        'windows over 5 x 5 neighbours', '8', neighbourhood=5),
    _variant('res-content-k7', 'PM random centres, residual, content-aware '
        'windows over 7 x 7 neighbours', 'd', neighbourhood=7),
    _variant('res-nearest', 'PM scored centres, nearest rule, residual', 's',
        'score', rule='nearest', reconstruct='residual', assign='static'),
    _variant('res-spread', 'PM spread centres, nearest rule, residual', 'P',
        'spread', rule='nearest', reconstruct='residual', assign='static'),
    _variant('res-lattice', 'PM lattice centres, nearest rule, residual', 'h',
        'lattice', rule='nearest', reconstruct='residual', assign='static'),
    _variant('res-span-spread', 'PM span mode, spread centres, residual', '*',
        'spread', mode='span', rule='nearest', reconstruct='residual',
        assign='static'),
)

# The benchmark's rows at a keep rate: what each one sets in the config's
# compression dict, and its label
BENCHMARK_VARIANTS = (
    BenchmarkVariant(DEFAULT_METHOD, dict(
        impl=config_default(PMConfig, 'impl'),
        reconstruct=config_default(PMConfig, 'reconstruct'),
        assign=config_default(PMConfig, 'assign')), 'PM keep {keep_rate:g}',
        by_default=True),
    BenchmarkVariant('pm-static', dict(
        impl=config_default(PMConfig, 'impl'),
        reconstruct=config_default(PMConfig, 'reconstruct'),
        assign='static'), 'PM keep {keep_rate:g}, static windows'),
    BenchmarkVariant('pm-pinv', dict(
        impl=config_default(PMConfig, 'impl'), reconstruct='pinv'),
        "PM keep {keep_rate:g}, authors' pinv", by_default=True),
    BenchmarkVariant('pm-matrix', dict(
        impl='dense', reconstruct=config_default(PMConfig, 'reconstruct')),
        'PM keep {keep_rate:g}, dense matrices'),
)

SPEC = MethodSpec(
    name=DEFAULT_METHOD, label='Prune and Merge',
    knob=('the centres per unit, k of the N patch tokens (the placement '
          'moves centres, never their counts: every placement has the same '
          'FLOPs)'),
    knob_range=_knob_range, knob_compression=_knob_compression,
    knob_text=_knob_text,
    # content-aware windows (the default): fixed centres and counts, each
    # image its own windows; assign='static' merges the same way for all
    fixed_shapes=True, per_image_merges=True, exports=True, structures=True,
    marker='o',
    picture_note='content-aware windows: centres fixed, windows of this '
                 'image',
    config=PMConfig, study_variants=STUDY_VARIANTS,
    benchmark_variants=BENCHMARK_VARIANTS,
    benchmark_fallback=_benchmark_fallback)
register(SPEC)
