"""Expedite's Hourglass (Liang et al., NeurIPS 2022, "Expediting Large-Scale
Vision Transformer for Dense Prediction without Fine-tuning") in the backbone.
Training-free.

Clustering, before block ``alpha`` (0-based; the authors' ``location`` is
the block *after which* they cluster, so their ``location=9`` is
``alpha=10``): the patch tokens ``f`` (B, N, C) are clustered into an
``h x w`` grid of cluster tokens by soft k-means in feature space, started
from the average-pooled cells of the token grid (adaptive average pooling).
Each token only sees the clusters whose cell lies within a ``window x
window`` window of cells around its own initial cell. One iteration::

    d[n, k] = ||f_n - c_k||^2            (masked to the window)
    a[n, k] = softmax_k(-t * d[n, k])
    c_k     = sum_n a[n, k] f_n / sum_n a[n, k]

repeated ``iters`` times. Blocks ``alpha`` and later run on the class token
and the ``h*w`` clusters: a fixed count, so shapes are static.

Reconstruction, at every output after the clustering: each token takes a
mix of the current cluster tokens, weighted by how close its features
*at the clustering point* were to the clusters found there::

    w[n, k] = exp(-t' * ||f_n - c_k||^2)   for the k' closest clusters, else 0
    out_n   = sum_k w[n, k] x_k / sum_k w[n, k]

Temperatures. The authors' ``t`` multiplies raw squared distances, so its
meaning depends on the scale of the features (0.02 was set on ViT-L). Here
``t = temperature / s`` with ``s`` the mean squared norm of the image's
patch tokens at the clustering point (``relative=True``): ``temperature`` is
then a dimensionless number that means the same on every model.
``relative=False`` takes ``temperature`` as the authors' absolute ``t``.

Differences from the authors' code, on purpose: the reconstruction weights
are normalised to sum to 1 (``norm='sum'``; the authors L2-normalise, which
scales a token's features by up to sqrt(k) and is harmless only on logits,
where they apply it: ``norm='l2'`` gives theirs); weights are computed from
``logits - max`` (the same after normalising; no underflow to 0/0); the
distances, softmax and weights run in fp32 under autocast.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from mmseg_pm.utils.errors import UsageError

from .config import (block_index, check_flag, check_keys, check_number,
                     check_within_grid, is_int, positive_int)
from .ops import autocast_off, initial_source
from .reducer import TokenReducer
from .registry import (MethodSpec, ModelShape, compressible_blocks, no_options,
                       register)

NORMS = ('sum', 'l2')


def pooling_matrix(grid: Tuple[int, int], cells: Tuple[int, int],
                   device=None) -> Tensor:
    """(h*w, H*W) matrix whose product with raster tokens is adaptive
    average pooling of the H x W grid to h x w cells (cell i of a dimension
    covers [floor(i*H/h), ceil((i+1)*H/h)), as torch's adaptive pooling).
    A matrix product exports anywhere and is counted as FLOPs."""
    def bins(size: int, num: int) -> Tensor:
        i = torch.arange(num, device=device)[:, None]
        j = torch.arange(size, device=device)[None, :]
        start, stop = (i * size) // num, -((-(i + 1) * size) // num)
        inside = (j >= start) & (j < stop)
        return inside.float() / inside.sum(1, keepdim=True)

    rows, cols = bins(grid[0], cells[0]), bins(grid[1], cells[1])
    return (rows[:, None, :, None] * cols[None, :, None, :]).reshape(
        cells[0] * cells[1], grid[0] * grid[1])


def initial_cells(grid: Tuple[int, int], cells: Tuple[int, int],
                  device=None) -> Tuple[Tensor, Tensor]:
    """Row and column of the initial cell of every raster token (nearest
    resizing of the cell grid to the token grid, as the authors do)."""
    rows = torch.arange(grid[0], device=device) * cells[0] // grid[0]
    cols = torch.arange(grid[1], device=device) * cells[1] // grid[1]
    return (rows[:, None].expand(grid).flatten(),
            cols[None, :].expand(grid).flatten())


def window_mask(grid: Tuple[int, int], cells: Tuple[int, int], window: int,
                device=None) -> Tensor:
    """(H*W, h*w) bool: cluster k is visible to token n when its cell is
    within ``window // 2`` cells (rows and columns) of n's initial cell."""
    rows, cols = initial_cells(grid, cells, device)
    cell_rows = torch.arange(cells[0], device=device).repeat_interleave(
        cells[1])
    cell_cols = torch.arange(cells[1], device=device).repeat(cells[0])
    r = window // 2
    return (((rows[:, None] - cell_rows[None]).abs() <= r) &
            ((cols[:, None] - cell_cols[None]).abs() <= r))


def squared_distances(f: Tensor, c: Tensor) -> Tensor:
    """(B, N, C) and (B, K, C) -> (B, N, K) squared Euclidean distances
    through one matrix product (counted as FLOPs)."""
    return ((f * f).sum(-1, keepdim=True) + (c * c).sum(-1)[:, None, :]
            - 2 * f @ c.transpose(1, 2)).clamp_min(0)


def temperature_scale(f: Tensor, relative: bool) -> Tensor:
    """(B, 1, 1): what a temperature is divided by. The mean squared norm
    of each image's tokens when ``relative``, else 1."""
    if not relative:
        return f.new_ones(f.shape[0], 1, 1)
    return (f * f).sum(-1).mean(-1)[:, None, None].clamp_min(1e-12)


def soft_kmeans(f: Tensor, init: Tensor, mask: Tensor, iters: int,
                temperature: Tensor) -> Tensor:
    """Clusters (B, K, C) after ``iters`` soft k-means steps from ``init``:
    tokens ``f`` (B, N, C) see only the clusters of ``mask`` (N, K);
    ``temperature`` (B, 1, 1) multiplies the squared distances."""
    c = init
    hidden = ~mask
    for _ in range(iters):
        logits = -temperature * squared_distances(f, c)
        a = logits.masked_fill(hidden, -torch.inf).softmax(-1)  # (B, N, K)
        c = (a.transpose(1, 2) @ f) / a.sum(1)[..., None].clamp_min(1e-16)
    return c


def hard_assignment(f: Tensor, c: Tensor, mask: Tensor) -> Tensor:
    """(B, N): each token's nearest visible cluster."""
    return squared_distances(f, c).masked_fill(~mask, torch.inf).argmin(-1)


def reconstruction_weights(f: Tensor, c: Tensor, k: int,
                           temperature: Tensor, norm: str = 'sum') -> Tensor:
    """(B, N, K): each token's weights on the clusters, exp(-t d) over its
    ``k`` closest clusters (ties at the k-th distance included, as the
    authors' threshold does), 0 elsewhere, normalised (``norm``: 'sum' to
    1, or 'l2' as the authors)."""
    logits = -temperature * squared_distances(f, c)
    k = min(k, logits.shape[-1])
    kth = logits.topk(k, dim=-1).values[..., -1:]
    weight = (logits - logits.amax(-1, keepdim=True)).exp()
    weight = weight.masked_fill(logits < kth, 0)
    if norm == 'l2':
        return weight / weight.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return weight / weight.sum(-1, keepdim=True)


class HourglassState(NamedTuple):
    hw: Tuple[int, int]  # token grid
    weight: Optional[Tensor]  # (B, N, K) reconstruction weights once clustered
    source: Tensor  # (B, T0) current token of every original token


class Hourglass(nn.Module, TokenReducer):
    """Hourglass in the backbone: clusters before block ``alpha`` into
    ``clusters`` = (h, w) clusters, reconstructs the full grid at every output
    after. No parameters. With as many clusters as tokens (or more) it is
    the dense model.

    A :class:`TokenReducer` (the backbone drives it through that interface).
    """

    method = 'hourglass'

    def __init__(self, alpha: int, clusters: Tuple[int, int], iters: int = 5,
                 window: int = 5, temperature: float = 50.0,
                 k: int = 20, recon_temperature: float = 50.0,
                 relative: bool = True, norm: str = 'sum',
                 num_prefix: int = 1):
        super().__init__()
        self.alpha = alpha
        self.clusters = tuple(clusters)
        self.iters = iters
        self.window = window
        self.temperature = temperature
        self.k = k
        self.recon_temperature = recon_temperature
        self.relative = relative
        self.norm = norm
        self.num_prefix = num_prefix

    def clusters_for(self, hw: Tuple[int, int]) -> Tuple[int, int]:
        """The cluster grid for a token grid: ``clusters``, no finer than
        it."""
        return (min(self.clusters[0], hw[0]), min(self.clusters[1], hw[1]))

    def reduces(self, hw: Tuple[int, int]) -> bool:
        cells = self.clusters_for(hw)
        return cells[0] * cells[1] < hw[0] * hw[1]

    def start(self, x: Tensor, hw: Tuple[int, int]) -> HourglassState:
        return HourglassState(tuple(hw), None, initial_source(x))

    def cluster(self, x: Tensor, hw: Tuple[int, int]
                ) -> Tuple[Tensor, Tensor, Tensor]:
        """Patch tokens -> (clusters (B, K, C) in x's dtype, reconstruction
        weights (B, N, K), hard assignment (B, N)); fp32 inside."""
        cells = self.clusters_for(hw)
        device = x.device
        with autocast_off(device.type):
            f = x.float()
            mask = window_mask(hw, cells, self.window, device)
            scale = temperature_scale(f, self.relative)
            init = pooling_matrix(hw, cells, device) @ f
            c = soft_kmeans(f, init, mask, self.iters,
                            self.temperature / scale)
            weight = reconstruction_weights(
                f, c, self.k, self.recon_temperature / scale, self.norm)
            labels = hard_assignment(f, c, mask) if self.trace_source \
                else None
        return c.to(x.dtype), weight, labels

    def run_block(self, i: int, layer: nn.Module, x: Tensor,
                  state: HourglassState) -> Tuple[Tensor, HourglassState]:
        """Block ``i``; the clustering runs just before block ``alpha``."""
        if i == self.alpha and self.reduces(state.hw):
            prefix = self.num_prefix
            c, weight, labels = self.cluster(x[:, prefix:], state.hw)
            x = torch.cat((x[:, :prefix], c), dim=1)
            source = state.source
            if labels is not None:
                source = torch.cat((source[:, :prefix], labels + prefix), 1)
            state = state._replace(weight=weight, source=source)
        self.record_source(i, state.source)
        return layer(x), state

    def full_grid(self, i: int, x: Tensor, state: HourglassState) -> Tensor:
        """(B, T, C) current tokens -> (B, T0, C): the class token as it is,
        every patch token its weighted mix of the clusters."""
        if state.weight is None:
            return x
        prefix = self.num_prefix
        patches = state.weight.to(x.dtype) @ x[:, prefix:]
        return torch.cat((x[:, :prefix], patches), dim=1)

    def merging_blocks(self) -> List[int]:
        return [self.alpha]

    def blocks(self, num_layers: int) -> List[int]:
        return list(range(self.alpha, num_layers))

    def tokens_per_block(self, num_tokens: int, num_layers: int) -> List[int]:
        """Tokens each block runs on, class token included, for
        ``num_tokens`` input tokens of a square-ish grid (the count after
        clustering is h*w + the class token when that is fewer)."""
        prefix = self.num_prefix
        clustered = min(num_tokens, self.clusters[0] * self.clusters[1] + prefix)
        return [num_tokens if i < self.alpha else clustered
                for i in range(num_layers)]

    def extra_repr(self) -> str:
        return (f'alpha={self.alpha}, clusters={self.clusters}, '
                f'iters={self.iters}, '
                f'window={self.window}, temperature={self.temperature}, '
                f'k={self.k}, recon_temperature={self.recon_temperature}, '
                f'relative={self.relative}, norm={self.norm!r}')


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

    method: ClassVar[str]  # set by register()
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
        check_keys(cfg, known, 'hourglass')
        cfg.pop('method')
        if 'alpha' not in cfg or 'clusters' not in cfg:
            raise UsageError(
                "method='hourglass' needs alpha= (the first block that runs "
                'on the clusters, 0-based) and clusters= (h, w) (or one int '
                'for a square grid), e.g. alpha=10, clusters=(28, 28)')
        alpha = block_index(cfg.pop('alpha'), 'alpha')
        if not 0 <= alpha < num_layers:
            raise UsageError(f'alpha={alpha} is outside blocks '
                             f'0..{num_layers - 1}')
        clusters = cfg.pop('clusters')
        if is_int(clusters):
            clusters = (clusters, clusters)
        if not isinstance(clusters, (list, tuple)) or len(clusters) != 2:
            raise UsageError('clusters must be (h, w) or one int, got '
                             f'{clusters!r}')
        clusters = tuple(positive_int(v, 'clusters') for v in clusters)
        for key in ('iters', 'window', 'k'):
            if key in cfg:
                cfg[key] = positive_int(cfg[key], key)
        if cfg.get('window', 5) % 2 == 0:
            raise UsageError(f"window must be odd (a window of cells centred "
                             f"on the token's own cell), got {cfg['window']}")
        for key in ('temperature', 'recon_temperature'):
            if key in cfg and check_number(cfg[key], key) <= 0:
                raise UsageError(f'{key} must be > 0, got {cfg[key]}')
            if key in cfg:
                cfg[key] = float(cfg[key])
        if 'relative' in cfg:
            check_flag(cfg['relative'], 'relative')
        if cfg.get('norm', 'sum') not in NORMS:
            raise UsageError(f'norm must be one of {NORMS}, got '
                             f"{cfg['norm']!r}")
        return cls(alpha=alpha, clusters=clusters, **cfg)

    def build_reducer(self, grid: Tuple[int, int], embed_dims: int,
                      num_prefix: int, img_size) -> Hourglass:
        # as many clusters as tokens is allowed: the dense model, as
        # keep_rate=1 is for Prune and Merge
        check_within_grid('clusters', self.clusters, grid, img_size,
                           'the extra clusters hold no token, so it would '
                           'cluster nothing', 'clusters (fewer save FLOPs)')
        return Hourglass(self.alpha, self.clusters, self.iters, self.window,
                         self.temperature, self.k, self.recon_temperature,
                         self.relative, self.norm, num_prefix)


# ---------------------------------------------------------------- knob
# The authors' ViT-L 640 setting: clusters from block 10 of 24 on (their
# clustering after block 9, 0-based), 28x28 clusters of 40x40 tokens.
HOURGLASS_DEPTH = 10 / 24
HOURGLASS_SHARE = (28 * 28) / (40 * 40)


def squareish_grids(grid: Tuple[int, int]) -> Dict[int, Tuple[int, int]]:
    """Cluster count -> its squarest (h, w) grid (h >= w, h <= 1.5 w, at
    most the token grid), for every count below the token count that has
    one."""
    grids = {}
    for h in range(1, grid[0] + 1):
        for w in range(1, min(h, grid[1]) + 1):
            k = h * w
            if 2 * h > 3 * w and h - w > 1 or k >= grid[0] * grid[1]:
                continue
            if k not in grids or h - w < grids[k][0] - grids[k][1]:
                grids[k] = (h, w)
    return dict(sorted(grids.items()))


def hourglass_flops(alpha: int, clusters: int, num_tokens: int,
                    num_layers: int, embed_dims: int, iters: int = 5,
                    outputs: int = 1) -> int:
    """FLOPs of the encoder blocks and Hourglass's own matrix products
    (pooling, distances and updates of every k-means step, the
    reconstruction's distances and one product per output) for
    ``num_tokens`` patch tokens (+ the class token), clustering before
    block ``alpha``. Orders settings; the study calibrates on counted
    FLOPs."""
    c = embed_dims

    def block(t):
        return 24 * t * c * c + 4 * t * t * c

    n, k = num_tokens, clusters
    overhead = 2 * n * k * c * (2 + 2 * iters + outputs)
    return (alpha * block(n + 1) + (num_layers - alpha) * block(k + 1)
            + overhead)


def hourglass_path(num_tokens: int, num_layers: int, embed_dims: int
                   ) -> List[Tuple[int, Tuple[int, int]]]:
    """The knob's settings (alpha, (h, w)), FLOPs strictly decreasing: first
    the authors' relative depth (their first block on clusters is 10 of 24,
    so alpha = round(10/24 L)) with fewer and fewer clusters down to the
    authors' share of the tokens (28x28 of 40x40, 49 %), then one block
    earlier at a time, each level continuing below the previous level's
    FLOPs, down to block 1 (block 0 stays dense, as for Prune and Merge)
    where the clusters go down to 1x1. Cluster grids are the squarest
    h x w (h >= w, h <= 1.5 w) of each count."""
    compressible_blocks(num_layers)
    side = math.isqrt(num_tokens)
    grids = squareish_grids((side, side))
    start = min(max(round(HOURGLASS_DEPTH * num_layers), 1), num_layers - 1)
    floor = math.ceil(HOURGLASS_SHARE * num_tokens)
    path, last = [], math.inf
    for alpha in range(start, 0, -1):
        for k in sorted(grids, reverse=True):
            if alpha > 1 and k < floor:
                break
            cost = hourglass_flops(alpha, k, num_tokens, num_layers,
                                   embed_dims)
            if cost < last:
                path.append((alpha, grids[k]))
                last = cost
    return path


def hourglass_setting(knob: int, shape: ModelShape
                      ) -> Tuple[int, Tuple[int, int]]:
    """(alpha, (h, w)) at a knob value."""
    path = hourglass_path(shape.num_tokens, shape.num_layers,
                          _width(shape))
    if not 0 <= knob < len(path):
        raise ValueError(f'Hourglass knob must be in [0, {len(path) - 1}], '
                         f'got {knob}')
    return path[knob]


def _width(shape: ModelShape) -> int:
    if shape.embed_dims is None:
        raise ValueError('Hourglass settings depend on the width: pass '
                         'embed_dims')
    return shape.embed_dims


def _knob_range(shape: ModelShape) -> Tuple[int, int]:
    return 0, len(hourglass_path(shape.num_tokens, shape.num_layers,
                                 _width(shape))) - 1


def _knob_compression(knob: int, shape: ModelShape, **options) -> dict:
    no_options(SPEC.name, options)
    alpha, clusters = hourglass_setting(knob, shape)
    return dict(method=SPEC.name, alpha=alpha, clusters=clusters)


def _knob_text(knob: int, shape: ModelShape) -> str:
    alpha, (h, w) = hourglass_setting(knob, shape)
    return f'{h}x{w} clusters from block {alpha}'


SPEC = MethodSpec(
    name=Hourglass.method, label='Hourglass',
    knob=('a position on a path of (alpha, h x w) settings ordered by FLOPs '
          '(hourglass_path): fewer clusters at the authors\' relative depth, '
          'then one block earlier at a time'),
    knob_range=_knob_range, knob_compression=_knob_compression,
    knob_text=_knob_text, fixed_shapes=True, per_image_merges=True,
    exports=True, marker='p',
    picture_note=('clusters depend on the image: each token drawn in its '
                  'nearest cluster (the output mixes its k nearest)'),
    config=HourglassConfig)
register(SPEC)
