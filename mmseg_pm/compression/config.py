"""The ``compression=`` argument of the backbone, parsed and validated, and
the registration of every method.

``method`` picks the compressor (default: Prune and Merge,
:data:`~.registry.DEFAULT_METHOD`); each method's config class is
registered here with its description (``@register(SPEC)``, the spec
declared next to the reducer), and :func:`parse_compression` reads any
registered method's dict through its class.

Every setting is checked here, where it is parsed, and a bad one is a
:class:`~mmseg_pm.utils.errors.UsageError` naming the fix: numbers must be
finite and in their range, and a setting that would do nothing on the
model's token grid (a window or a cluster grid larger than it) is refused
with the grid named when the reducer is built for it.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import (ClassVar, Dict, List, Optional, Protocol, Sequence,
                    Tuple)

from mmseg_pm.utils.errors import UsageError

from . import algm, hourglass, merge, mpm, mstm, tome
from .algm import ALGM
from .hourglass import NORMS, Hourglass
from .merge import PruneAndMerge
from .mpm import DEFAULT_LAYERS as MPM_LAYERS
from .mpm import MPM
from .mstm import MSTM
from .reducer import TokenReducer
from .registry import DEFAULT_METHOD, method_spec, register
from .structure import ASSIGN_RULES, DEFAULT_RULE, lattice_structure
from .tome import ToMe, check_tome_merges
from .unit import (ASSIGNS, DEFAULT_ASSIGN, DEFAULT_IMPL,
                   DEFAULT_NEIGHBOURHOOD, DEFAULT_RECONSTRUCT, IMPLS,
                   RECONSTRUCTS)

MODES = ('layer', 'span')


def _check_keys(cfg: dict, known: set, method: str) -> None:
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise UsageError(f'unknown compression keys {unknown} for '
                         f'method={method!r}; expected some of '
                         f'{sorted(known)}')


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _block_index(value, name: str) -> int:
    """A block index: an integer (1.7 is not block 1)."""
    if not _is_int(value):
        raise UsageError(f'{name} must hold integer block indices, got '
                         f'{value!r} ({type(value).__name__})')
    return int(value)


def _check_number(value, name: str) -> float:
    """A finite real number (not a flag, not text, not NaN or infinite:
    every comparison with NaN is False, so a NaN setting would silently
    switch its step off)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UsageError(f'{name} must be a number, got {value!r} '
                         f'({type(value).__name__})')
    if not math.isfinite(value):
        raise UsageError(f'{name} must be a finite number, got {value!r}')
    return float(value)


def _check_flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f'{name} must be True or False, got {value!r}')
    return value


def _check_span(span) -> Tuple[int, int]:
    """A span: two block indices (first, last)."""
    if not isinstance(span, (list, tuple)) or len(span) != 2:
        raise UsageError('spans must be (first, last) pairs of block '
                         f'indices, got {span!r}')
    return (_block_index(span[0], 'spans'), _block_index(span[1], 'spans'))


def _check_layers(layers: Sequence[int], num_layers: int,
                  name: str) -> List[int]:
    """Sorted, distinct block indices inside 0..num_layers-1."""
    if not isinstance(layers, (list, tuple)) or not layers:
        raise UsageError(f'{name} must be a non-empty list of block indices, '
                         f'got {layers!r}')
    layers = [_block_index(i, name) for i in layers]
    if len(set(layers)) != len(layers):
        raise UsageError(f'{name} lists a block twice: {layers}')
    outside = [i for i in layers if not 0 <= i < num_layers]
    if outside:
        raise UsageError(f'{name} {outside} are outside blocks '
                         f'0..{num_layers - 1}')
    return sorted(layers)


def _index_list(value, name: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise UsageError(f'{name} must be a list, got {value!r}')
    return list(value)


def _check_within_grid(name: str, size: Tuple[int, int],
                       grid: Tuple[int, int], img_size, nothing: str,
                       hint: str) -> None:
    """Refuse an (h, w) setting larger than the model's token grid: on
    that grid it would do ``nothing``."""
    if size[0] > grid[0] or size[1] > grid[1]:
        raise UsageError(
            f'{name}={tuple(size)} is larger than the {grid[0]}x{grid[1]} '
            f'token grid of img_size={img_size}: {nothing}; use at most '
            f'{grid[0]}x{grid[1]} {hint}')


def _per_layer(value, layers: List[int], name: str) -> list:
    """A scalar for every layer, or one value per layer (in given order)."""
    if isinstance(value, (list, tuple)):
        if len(value) != len(layers):
            raise UsageError(f'{name} has {len(value)} entries for '
                             f'{len(layers)} layers {layers}; give one per '
                             'layer or a single value')
        return list(value)
    return [value] * len(layers)


@register(merge.SPEC)
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

    method: ClassVar[str]  # set by @register
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
        _check_keys(cfg, known, 'pm')
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
            units = [(_block_index(i, 'layers'), ) * 2
                     for i in _index_list(layers, 'layers')]
        else:
            if layers is not None or spans is None:
                raise UsageError("compression mode 'span' takes "
                                 'spans=[(first, last), ...], not layers')
            units = [_check_span(span) for span in _index_list(spans,
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
                cfg[key] = _check_number(cfg[key], key)
        for flag in ('trainable', 'proportional_attention'):
            if flag in cfg:
                _check_flag(cfg[flag], flag)
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
        if self.impl not in IMPLS:
            raise UsageError(f'impl must be one of {IMPLS}, got {self.impl!r}')
        if self.assign not in ASSIGNS:
            raise UsageError(
                f'assign must be one of {ASSIGNS}, got {self.assign!r} '
                "('content': per image, each token joins the most similar "
                "centre near it; 'static': the structure's windows, for "
                'checkpoints made before content-aware windows)')
        if (isinstance(self.neighbourhood, bool)
                or not isinstance(self.neighbourhood, int)
                or self.neighbourhood < 1 or self.neighbourhood % 2 == 0):
            raise UsageError(
                'neighbourhood must be an odd int >= 1 (the k x k tokens '
                f'whose windows a token may join), got {self.neighbourhood!r}')
        if self.reconstruct not in RECONSTRUCTS:
            raise UsageError(
                f'reconstruct must be one of {RECONSTRUCTS}, got '
                f"{self.reconstruct!r} ('residual': every token keeps its "
                "value and gets its window's update, the project default; "
                "'pinv': the authors' pseudo-inverse, for their checkpoints)")

    def build_reducer(self, grid: Tuple[int, int], embed_dims: int,
                      with_cls_token: bool, img_size) -> PruneAndMerge:
        """Its reducer, every unit on centres on a regular lattice with
        keep_rate of the tokens (until structures are installed)."""
        default = lattice_structure(grid, self.keep_rate, self.rule)
        return PruneAndMerge(self.units, default, int(with_cls_token),
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


@register(mstm.SPEC)
@dataclass(frozen=True)
class MSTMConfig:
    """Multi-Scale And Token Mergence (``method='mstm'``).

    At each block of ``prune_layers`` the top ``keep_rate`` of the current
    patch tokens (by class-token attention) stay; every other token is merged
    into its most similar kept token. ``keep_rates`` maps each pruning block
    to its rate (``keep_rate`` may be one float or one per pruning layer).
    ``coarse``: fuse the zero-initialised 2x2 coarse branch into the tokens
    before the first pruning layer.
    """

    method: ClassVar[str]  # set by @register
    keep_rates: Dict[int, float] = field(default_factory=dict)
    coarse: bool = True

    @classmethod
    def from_dict(cls, cfg: dict, num_layers: int) -> 'MSTMConfig':
        cfg = dict(cfg)
        _check_keys(cfg, {'method', 'prune_layers', 'keep_rate', 'coarse'},
                    'mstm')
        if 'prune_layers' not in cfg:
            raise UsageError("method='mstm' needs prune_layers=[...] (the "
                             'blocks that merge tokens), e.g. [2, 5, 8]')
        given = cfg['prune_layers']
        layers = _check_layers(given, num_layers, 'prune_layers')
        rates = _per_layer(cfg.get('keep_rate', 0.7), list(given), 'keep_rate')
        for rate in rates:
            if not 0 < _check_number(rate, 'keep_rate') <= 1:
                raise UsageError(f'keep_rate must be in (0, 1], got {rate}')
        keep_rates = {int(i): float(r) for i, r in zip(given, rates)}
        coarse = _check_flag(cfg.get('coarse', True), 'coarse')
        return cls(keep_rates={i: keep_rates[i] for i in layers},
                   coarse=coarse)

    def build_reducer(self, grid: Tuple[int, int], embed_dims: int,
                      with_cls_token: bool, img_size) -> MSTM:
        if not with_cls_token:
            raise UsageError(
                "compression method='mstm' ranks tokens by the class "
                "token's attention and needs with_cls_token=True; use "
                "method='tome' or 'pm' for a model without a class token")
        return MSTM(embed_dims, self.keep_rates, self.coarse)

    @property
    def prune_layers(self) -> List[int]:
        return list(self.keep_rates)


@register(tome.SPEC)
@dataclass(frozen=True)
class ToMeConfig:
    """Token Merging (``method='tome'``): ``merges`` maps each block of
    ``layers`` (default: every block) to the number ``r`` of tokens it
    merges away (``r`` may be one int or one per layer)."""

    method: ClassVar[str]  # set by @register
    merges: Dict[int, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, cfg: dict, num_layers: int) -> 'ToMeConfig':
        cfg = dict(cfg)
        _check_keys(cfg, {'method', 'layers', 'r'}, 'tome')
        if 'r' not in cfg:
            raise UsageError("method='tome' needs r= (tokens merged per "
                             'block: an int, or a list with one per layer)')
        given = cfg.get('layers', list(range(num_layers)))
        layers = _check_layers(given, num_layers, 'layers')
        rs = _per_layer(cfg['r'], list(given), 'r')
        for r in rs:
            if isinstance(r, bool) or not isinstance(r, int) or r < 0:
                raise UsageError(f'r must be a non-negative int, got {r!r}')
        merges = dict(zip((int(i) for i in given), rs))
        return cls(merges={i: merges[i] for i in layers})

    def build_reducer(self, grid: Tuple[int, int], embed_dims: int,
                      with_cls_token: bool, img_size) -> ToMe:
        check_tome_merges(self.merges, grid[0] * grid[1] + int(with_cls_token),
                          with_cls_token,
                          f' (the tokens of img_size={img_size})')
        return ToMe(self.merges, class_token=with_cls_token)


def _positive_int(value, name: str) -> int:
    if not _is_int(value) or value < 1:
        raise UsageError(f'{name} must be a positive integer, got {value!r}')
    return int(value)


@register(hourglass.SPEC)
@dataclass(frozen=True)
class HourglassConfig:
    """Expedite's Hourglass (``method='hourglass'``, training-free): the
    patch tokens are clustered just before block ``alpha`` (0-based; the
    authors' ``location`` + 1) into ``clusters`` = (h, w) (or one int for
    h = w) by ``iters`` soft k-means steps with a ``window`` x ``window``
    window of cells and ``temperature``; every output after is
    reconstructed from the ``k`` closest clusters with
    ``recon_temperature``. ``relative``: temperatures are divided by the
    mean squared token norm (dimensionless, the same meaning on every
    model); False takes them as the authors' raw values. ``norm``: 'sum'
    (weights sum to 1) or 'l2' (the authors'). See compression/hourglass.py.

    Defaults: the authors' iters 5, window 5, k 20; both temperatures 50
    relative to the mean squared token norm (measured on the study's
    Segmenter: 30 to 100 give the same mIoU, 10 loses 1.8, 0.56 - the
    authors' raw 0.02 on that model's scale - loses 28; the authors' 0.02
    on ViT-L is 50 if its tokens' mean squared norm at the clustering point
    is 2500, which we could not check without their checkpoint).
    """

    method: ClassVar[str]  # set by @register
    alpha: int = 0
    clusters: Tuple[int, int] = (1, 1)
    iters: int = 5
    window: int = 5
    temperature: float = 50.0
    k: int = 20
    recon_temperature: float = 50.0
    relative: bool = True
    norm: str = 'sum'

    @classmethod
    def from_dict(cls, cfg: dict, num_layers: int) -> 'HourglassConfig':
        cfg = dict(cfg)
        known = {'method', 'alpha', 'clusters', 'iters', 'window',
                 'temperature', 'k', 'recon_temperature', 'relative', 'norm'}
        _check_keys(cfg, known, 'hourglass')
        cfg.pop('method')
        if 'alpha' not in cfg or 'clusters' not in cfg:
            raise UsageError(
                "method='hourglass' needs alpha= (the first block that runs "
                'on the clusters, 0-based) and clusters= (h, w) (or one int '
                'for a square grid), e.g. alpha=10, clusters=(28, 28)')
        alpha = _block_index(cfg.pop('alpha'), 'alpha')
        if not 0 <= alpha < num_layers:
            raise UsageError(f'alpha={alpha} is outside blocks '
                             f'0..{num_layers - 1}')
        clusters = cfg.pop('clusters')
        if _is_int(clusters):
            clusters = (clusters, clusters)
        if not isinstance(clusters, (list, tuple)) or len(clusters) != 2:
            raise UsageError('clusters must be (h, w) or one int, got '
                             f'{clusters!r}')
        clusters = tuple(_positive_int(v, 'clusters') for v in clusters)
        for key in ('iters', 'window', 'k'):
            if key in cfg:
                cfg[key] = _positive_int(cfg[key], key)
        if cfg.get('window', 5) % 2 == 0:
            raise UsageError(f"window must be odd (a window of cells centred "
                             f"on the token's own cell), got {cfg['window']}")
        for key in ('temperature', 'recon_temperature'):
            if key in cfg and _check_number(cfg[key], key) <= 0:
                raise UsageError(f'{key} must be > 0, got {cfg[key]}')
            if key in cfg:
                cfg[key] = float(cfg[key])
        if 'relative' in cfg:
            _check_flag(cfg['relative'], 'relative')
        if cfg.get('norm', 'sum') not in NORMS:
            raise UsageError(f'norm must be one of {NORMS}, got '
                             f"{cfg['norm']!r}")
        return cls(alpha=alpha, clusters=clusters, **cfg)

    def build_reducer(self, grid: Tuple[int, int], embed_dims: int,
                      with_cls_token: bool, img_size) -> Hourglass:
        # as many clusters as tokens is allowed: the dense model, as
        # keep_rate=1 is for Prune and Merge
        _check_within_grid('clusters', self.clusters, grid, img_size,
                           'the extra clusters hold no token, so it would '
                           'cluster nothing', 'clusters (fewer save FLOPs)')
        return Hourglass(self.alpha, self.clusters, self.iters, self.window,
                         self.temperature, self.k, self.recon_temperature,
                         self.relative, self.norm, with_cls_token)


@register(algm.SPEC)
@dataclass(frozen=True)
class ALGMConfig:
    """Adaptive Local-then-Global Merging (``method='algm'``; algm.py).

    ``local_layer``: the block (0-based, like every ``layers`` key here;
    the authors' "layer 1" is block 0) that merges each ``window`` cell of
    the grid whose mean pairwise cosine similarity is >= ``threshold``.
    ``global_layer``: the later block (authors' "layer 5" = block 4 for
    ViT-T/S/B, "layer 7" = block 6 for ViT-L; None: no global merge) whose
    bipartite matching merges every token scoring >= mean + std / layer.
    ``proportional_attention``: the log-size attention bias (off: the
    authors' attention ignores sizes).
    """

    method: ClassVar[str]  # set by @register
    local_layer: int = 0
    global_layer: Optional[int] = 4
    threshold: float = 0.88
    window: Tuple[int, int] = (2, 2)
    proportional_attention: bool = False

    @classmethod
    def from_dict(cls, cfg: dict, num_layers: int) -> 'ALGMConfig':
        cfg = dict(cfg)
        _check_keys(cfg, {'method', 'local_layer', 'global_layer',
                          'threshold', 'window', 'proportional_attention'},
                    'algm')
        local = _block_index(cfg.get('local_layer', 0), 'local_layer')
        glob = cfg.get('global_layer', 4)
        if glob is not None:
            glob = _block_index(glob, 'global_layer')
        for name, block in (('local_layer', local), ('global_layer', glob)):
            if block is not None and not 0 <= block < num_layers:
                raise UsageError(f'{name}={block} is outside blocks '
                                 f'0..{num_layers - 1}')
        if glob is not None and glob <= local:
            raise UsageError(
                f'global_layer={glob} must come after local_layer={local}: '
                'the local merge cuts the full token grid into windows')
        threshold = _check_number(cfg.get('threshold', 0.88), 'threshold')
        if not -1 <= threshold <= 1:
            raise UsageError(
                f'threshold must be in [-1, 1], got {threshold}: it is '
                "compared with a window's mean cosine similarity, which lies "
                'there (at -1 every window merges, above 1 none would)')
        window = cfg.get('window', (2, 2))
        if _is_int(window):
            window = (window, window)
        if not isinstance(window, (list, tuple)) or len(window) != 2 or \
                not all(_is_int(w) and w >= 1 for w in window) or \
                window[0] * window[1] < 2:
            raise UsageError('window must be a positive int or an (h, w) '
                             'pair of them covering at least 2 tokens, got '
                             f'{window!r}')
        prop = _check_flag(cfg.get('proportional_attention', False),
                           'proportional_attention')
        return cls(local_layer=local, global_layer=glob, threshold=threshold,
                   window=(int(window[0]), int(window[1])),
                   proportional_attention=prop)

    def build_reducer(self, grid: Tuple[int, int], embed_dims: int,
                      with_cls_token: bool, img_size) -> ALGM:
        _check_within_grid('window', self.window, grid, img_size,
                           'no window fits, so no token would merge '
                           "locally", "(the authors' window is (2, 2))")
        return ALGM(self.local_layer, self.global_layer, self.threshold,
                    self.window, with_cls_token, self.proportional_attention)


@register(mpm.SPEC)
@dataclass(frozen=True)
class MPMConfig:
    """Mutual Pair Merging (``method='mpm'``; mpm.py), training-free.

    ``layers``: the blocks (0-based) before which the mutual nearest-
    neighbour pairs of the patch tokens become their means; the authors'
    default (2, 5), before the 3rd and the 6th block, on every backbone.
    There is no other setting (no keep rate, no threshold).
    """

    method: ClassVar[str]  # set by @register
    layers: Tuple[int, ...] = MPM_LAYERS

    @classmethod
    def from_dict(cls, cfg: dict, num_layers: int) -> 'MPMConfig':
        cfg = dict(cfg)
        _check_keys(cfg, {'method', 'layers'}, 'mpm')
        if 'layers' not in cfg and max(MPM_LAYERS) >= num_layers:
            raise UsageError(
                f"method='mpm' merges before blocks {MPM_LAYERS} by default "
                f'but the backbone has {num_layers} blocks '
                f'(0..{num_layers - 1}); give layers=[...] inside them')
        layers = _check_layers(cfg.get('layers', MPM_LAYERS), num_layers,
                               'layers')
        return cls(layers=tuple(layers))

    def build_reducer(self, grid: Tuple[int, int], embed_dims: int,
                      with_cls_token: bool, img_size) -> MPM:
        return MPM(self.layers, class_token=with_cls_token)


class AnyCompressionConfig(Protocol):
    """What every registered config class offers."""

    method: ClassVar[str]

    @classmethod
    def from_dict(cls, cfg: dict, num_layers: int) -> 'AnyCompressionConfig':
        """The validated config of a ``compression=`` dict."""

    def build_reducer(self, grid: Tuple[int, int], embed_dims: int,
                      with_cls_token: bool, img_size) -> TokenReducer:
        """Its reducer for a backbone with this grid, width and class
        token."""


def parse_compression(cfg: Optional[dict],
                      num_layers: int) -> Optional[AnyCompressionConfig]:
    """The backbone's ``compression=`` dict as the config of its method
    (None: the dense model)."""
    if cfg is None:
        return None
    return method_spec(cfg.get('method', DEFAULT_METHOD)).config.from_dict(
        cfg, num_layers)


def build_reducer(config: Optional[AnyCompressionConfig],
                  grid: Tuple[int, int], embed_dims: int,
                  with_cls_token: bool = True,
                  img_size=None) -> Optional[TokenReducer]:
    """The token reducer of a parsed ``compression=`` (None: dense), for a
    backbone with this token grid, width and class token."""
    if config is None:
        return None
    return config.build_reducer(tuple(grid), embed_dims, with_cls_token,
                                img_size)
