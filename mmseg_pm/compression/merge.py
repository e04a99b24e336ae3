"""Merge tokens into centres and reconstruct the full grid.

Pure functions first (sparse and dense formulations of the same
arithmetic), then :class:`TokenCompressor`, the small module that holds one
unit's structure as buffers and its trainable weights as parameters.

Two reconstructions (docs/residual.md):

* ``'residual'`` (default): ``x' = x + R~ (B(M~ x) - M~ x)`` -- every token
  keeps its own value and receives its window's update; M~ is M with rows
  normalised to sum 1, R~ starts at 1. Pruned tokens get no update.
* ``'pinv'`` (the authors'): ``x' = R B(M x) + x_pruned`` with R = pinv(M):
  every merged token becomes a scaled copy of its window's output.

Sparse: ``x_small[k] = sum_{p in k} w_p x_p`` is a segment sum (index_add)
and ``x[p] = r_p y[group[p]]`` a gather and a scale; exported to ONNX, the
segment sum becomes gathers over per-size tables of the windows
(:func:`tabled_segment_sum`), since onnxruntime's scatter-add is unsafe on
several threads. Dense: explicit M (K x N) and R (N x K) matrix products,
as the authors' code does; kept as the reference tests compare against and
the baseline benchmarks beat.

Two assignments (docs/content_windows.md): ``'static'``, every token in
its structure's window; ``'content'``, per image, every kept token joins
the most similar centre (cosine) among the windows of its k x k
neighbourhood (:func:`candidate_windows`, :func:`content_assignment`), the
centres and their number K unchanged. Its merge is a per-image segment sum
(sparse) or a per-image one-hot matrix product (dense, and what is
exported: no index written twice).
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .reducer import STRUCTURES_NAME, TokenReducer
from .structure import (CompressionStructure, mean_merge_weights,
                        reconstruct_weights)

IMPLS = ('sparse', 'dense')
RECONSTRUCTS = ('residual', 'pinv')
ASSIGNS = ('static', 'content')


def batched_rows(index: Tensor, batch: int, rows: int) -> Tensor:
    """``index`` repeated for each of ``batch`` stacked blocks of ``rows``
    rows, as indices into the flattened (batch * rows, C) tensor.

    A gather or scatter along dim 1 of (B, T, C) becomes one along dim 0,
    which CPU kernels run several times faster (whole contiguous rows).
    """
    offsets = torch.arange(batch, device=index.device) * rows
    return (offsets[:, None] + index[None]).flatten()


def segment_sum(x: Tensor, index: Tensor, weight: Tensor, num_groups: int,
                rows: Optional[Tensor] = None) -> Tensor:
    """``out[b, index[p]] += weight[p] * x[b, p]``: (B, N, C) -> (B, G, C).

    ``rows`` is ``batched_rows(index, B, num_groups)`` if already known.
    """
    b, n, c = x.shape
    if rows is None:
        rows = batched_rows(index, b, num_groups)
    src = (x * weight.to(x.dtype)[:, None]).reshape(b * n, c)
    out = x.new_zeros(b * num_groups, c)
    return out.index_add_(0, rows, src).view(b, num_groups, c)


def gather_scale(y: Tensor, index: Tensor, weight: Tensor,
                 rows: Optional[Tensor] = None) -> Tensor:
    """``x[b, p] = weight[p] * y[b, index[p]]``: (B, K, C) -> (B, N, C).

    ``rows`` is ``batched_rows(index, B, K)`` if already known. Scales in
    place when autograd does not need the gathered values.
    """
    b, k, c = y.shape
    if rows is None:
        rows = batched_rows(index, b, k)
    out = y.reshape(b * k, c).index_select(0, rows).view(b, -1, c)
    weight = weight.to(y.dtype)[:, None]
    if torch.is_grad_enabled() and (out.requires_grad or weight.requires_grad):
        return out * weight
    return out.mul_(weight)


def window_tables(group: Tensor) -> Tuple[List[Tensor], Tensor]:
    """The tokens of every window (``group``: window id per token, -1
    pruned; no window empty) as a few padded tables, one per size class:
    windows of 1, 2, 3-4, 5-8, ... tokens, each row one window's tokens in
    raster order, padded with -1. Returns (tables, order): ``order[k]`` is
    the row of window k in the tables stacked in class order."""
    kept = torch.nonzero(group >= 0).flatten()
    num_windows = int(group.max()) + 1
    size = torch.bincount(group[kept], minlength=num_windows)
    if bool((size == 0).any()):
        raise ValueError('window_tables: a window without tokens')
    tokens = kept[torch.argsort(group[kept], stable=True)]
    start = torch.cumsum(size, 0) - size
    width = 2 ** torch.ceil(torch.log2(size.double())).long()
    tables, windows = [], []
    for w in torch.unique(width).tolist():
        members = torch.nonzero(width == w).flatten()
        slot = torch.arange(w, device=group.device)
        index = start[members, None] + slot
        valid = slot < size[members, None]
        index = index.clamp(max=tokens.numel() - 1)  # padding: any token
        tables.append(torch.where(valid, tokens[index], -1))
        windows.append(members)
    order = torch.argsort(torch.cat(windows))
    return tables, order


def tabled_segment_sum(x: Tensor, weight: Tensor, tables: Sequence[Tensor],
                       order: Tensor, num_prefix: int = 0) -> Tensor:
    """The segment sum of :func:`segment_sum` by gathers and sums over the
    :func:`window_tables` of the windows: (B, P + N, C) -> (B, P + G, C),
    no row written twice. The ``num_prefix`` = P leading tokens are windows
    of their own; ``weight`` (N,) and the tables are over the others.

    What is exported: onnxruntime runs a ScatterND-add with repeated
    indices on several threads without synchronisation and loses updates
    (microsoft/onnxruntime#18048; measured here on the ViT-S backbone at
    keep 0.5, 2 threads: 0.02-0.12 max abs error in about half the runs).
    """
    b, _, c = x.shape
    weight = weight.to(x.dtype)
    sums = [x[:, :num_prefix]]
    for table in tables:
        valid = table >= 0
        index = table.clamp(min=0)
        rows = x.index_select(1, index.flatten() + num_prefix)
        slot_weight = torch.where(valid, weight[index], 0)
        sums.append(torch.matmul(slot_weight[:, None],
                                 rows.view(b, *table.shape, c)).squeeze(-2))
    order = with_prefix(order, num_prefix)
    return torch.cat(sums, 1).index_select(1, order)


def merge_sparse(x: Tensor, slot: Tensor, weight: Tensor,
                 num_groups: int) -> Tensor:
    """Weighted segment sum of tokens ``x`` (B, N, C) into ``num_groups``.

    ``slot[p]`` is the window of token p, or ``num_groups`` for pruned
    tokens (a spare row that is dropped).
    """
    return segment_sum(x, slot, weight, num_groups + 1)[:, :num_groups]


def reconstruct_sparse(y: Tensor, gather: Tensor, weight: Tensor) -> Tensor:
    """``x[p] = weight[p] * y[gather[p]]``: the pseudo-inverse of a merge."""
    return gather_scale(y, gather, weight)


def merge_matrix(group: Tensor, weight: Tensor, num_groups: int) -> Tensor:
    """Dense (K, N) merge matrix with ``weight[p]`` at ``(group[p], p)``."""
    kept = torch.nonzero(group >= 0).flatten()
    m = weight.new_zeros(num_groups, group.numel())
    return m.index_put((group[kept], kept), weight[kept])


def reconstruct_matrix(group: Tensor, weight: Tensor, num_groups: int) -> Tensor:
    """Dense (N, K) reconstruct matrix with ``weight[p]`` at ``(p, group[p])``."""
    return merge_matrix(group, weight, num_groups).t()


def with_prefix(index: Tensor, num_prefix: int) -> Tensor:
    """Indices over ``num_prefix`` leading tokens (each its own slot) and
    then ``index`` shifted past them."""
    if num_prefix == 0:
        return index
    head = torch.arange(num_prefix, device=index.device, dtype=index.dtype)
    return torch.cat((head, index + num_prefix))


def weight_with_prefix(weight: Tensor, num_prefix: int) -> Tensor:
    """``weight`` preceded by a weight of 1 for each leading token."""
    if num_prefix == 0:
        return weight
    return torch.cat((weight.new_ones(num_prefix), weight))


def candidate_windows(group: Tensor, is_centre: Tensor,
                      grid: Tuple[int, int], neighbourhood: int) -> Tensor:
    """(N, k * k) windows each token may join under content-aware
    assignment: the windows of the kept tokens in its k x k neighbourhood,
    its own window first (ties go to it) and in place of neighbours that
    are pruned or off the grid. A centre's row is its own window only (a
    centre stays in its window); a pruned token's row is window 0 (its
    merge weight is 0)."""
    if neighbourhood < 1 or neighbourhood % 2 == 0:
        raise ValueError(f'neighbourhood must be an odd size >= 1, got '
                         f'{neighbourhood}')
    h, w = grid
    own = group.clamp(min=0)
    reach = neighbourhood // 2
    steps = torch.arange(-reach, reach + 1, device=group.device)
    dy, dx = steps.repeat_interleave(neighbourhood), steps.repeat(
        neighbourhood)
    first = torch.argsort((dy != 0) | (dx != 0), stable=True)  # (0, 0)
    dy, dx = dy[first], dx[first]
    token = torch.arange(h * w, device=group.device)
    y, x = token[:, None] // w + dy, token[:, None] % w + dx
    inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
    window = group[y.clamp(0, h - 1) * w + x.clamp(0, w - 1)]
    candidates = torch.where(inside & (window >= 0), window, own[:, None])
    fixed = is_centre | (group < 0)
    return torch.where(fixed[:, None], own[:, None], candidates)


def content_assignment(x: Tensor, centre: Tensor,
                       candidates: Tensor) -> Tensor:
    """(B, N) window of every token of ``x`` (B, N, C): the candidate
    (``candidates`` (N, k * k) from :func:`candidate_windows`) whose centre
    token (``centre`` (K,) token indices) is most similar to it by cosine.
    The cosine's norm of x_p is the same for all of p's candidates, so only
    the centres are normalised. Not differentiable (an argmax)."""
    b, n, c = x.shape
    x = x.detach()
    centres = F.normalize(x.index_select(1, centre), dim=-1)
    near = centres.index_select(1, candidates.flatten()).view(b, n, -1, c)
    similarity = torch.matmul(near, x.unsqueeze(-1)).squeeze(-1)
    choice = similarity.argmax(-1, keepdim=True)
    return candidates.expand(b, -1, -1).gather(2, choice).squeeze(-1)


def per_image_rows(assign: Tensor, num_slots: int) -> Tensor:
    """(B, T) slot of every token -> rows of the flattened
    (B * num_slots, C) merged tensor."""
    offsets = torch.arange(assign.shape[0], device=assign.device)
    return (offsets[:, None] * num_slots + assign).flatten()


def assignment_matrices(assign: Tensor, weight: Tensor,
                        num_slots: int) -> Tensor:
    """Per-image dense merge matrices (B, S, T): ``weight[p]`` at
    ``(assign[b, p], p)``. Built by a comparison (exports as Equal)."""
    slots = torch.arange(num_slots, device=assign.device)
    one_hot = (assign[:, None, :] == slots[None, :, None]).to(weight.dtype)
    return one_hot * weight


def merge_by_assignment(x: Tensor, assign: Tensor, weight: Tensor,
                        num_slots: int, mean: bool, dense: bool) -> Tensor:
    """Per-image ``M x``: ``out[b, assign[b, p]] += weight[p] x[b, p]``,
    (B, T, C) -> (B, num_slots, C); ``mean``: divided by each slot's
    weight total (M~, rows summing to 1). ``dense``: by the one-hot
    matrices of :func:`assignment_matrices` (no index written twice),
    else by one segment sum."""
    if dense:
        m = assignment_matrices(assign, weight, num_slots)
        if mean:
            m = m / m.sum(-1, keepdim=True)
        return torch.matmul(m, x)
    b = x.shape[0]
    rows = per_image_rows(assign, num_slots)
    merged = segment_sum(x, None, weight, num_slots, rows=rows)
    if mean:
        total = x.new_zeros(b * num_slots).index_add_(
            0, rows, weight.expand(b, -1).flatten())
        merged = merged / total.view(b, num_slots, 1)
    return merged


def spread_by_assignment(y: Tensor, assign: Tensor, spread_weight: Tensor,
                         merge_weight: Optional[Tensor], dense: bool
                         ) -> Tensor:
    """Per-image ``R y``: ``out[b, p] = r_p y[b, assign[b, p]]``, (B, S, C)
    -> (B, T, C); with ``merge_weight`` (pinv) divided by the slot's
    ``sum w_i^2`` (the closed-form pseudo-inverse of the image's M).
    ``dense``: by the transposed one-hot matrices, else by a gather."""
    b, slots, c = y.shape
    tiny = torch.finfo(y.dtype).tiny
    if dense:
        r = assignment_matrices(assign, spread_weight, slots).transpose(1, 2)
        if merge_weight is not None:
            norm = assignment_matrices(assign, merge_weight**2, slots).sum(-1)
            r = r / norm.clamp(min=tiny)[:, None]
        return torch.matmul(r, y)
    rows = per_image_rows(assign, slots)
    scale = spread_weight.expand(b, -1)
    if merge_weight is not None:
        norm = y.new_zeros(b * slots).index_add_(
            0, rows, (merge_weight**2).expand(b, -1).flatten())
        scale = scale / norm.clamp(min=tiny).index_select(0, rows).view(b, -1)
    return y.reshape(b * slots, c).index_select(0, rows).view(
        b, -1, c) * scale[..., None]


def check_saved_unit(state_dict: dict, prefix: str, grid: Tuple[int, int],
                     assign: str, reconstruct: str) -> None:
    """Refuse a checkpoint's unit at ``prefix`` made for another token
    grid, assignment or reconstruction (non-strict loading would only
    warn, and the weights of one are wrong for the other). Checkpoints
    written before the residual form (all pinv) and before content-aware
    windows (all static) get those buffers filled in."""
    saved = state_dict.get(prefix + 'grid')
    if saved is None:
        return
    if tuple(int(v) for v in saved) != tuple(grid):
        raise ValueError(
            f'checkpoint structure at {prefix!r} is for a '
            f'{int(saved[0])}x{int(saved[1])} token grid but this model '
            f'uses {grid[0]}x{grid[1]}; set the backbone img_size to the '
            'size the structure was built for (grid x patch_size)')
    residual = state_dict.setdefault(prefix + 'residual', torch.tensor(False))
    content = state_dict.setdefault(prefix + 'content', torch.tensor(False))
    saved_assign = 'content' if bool(content) else 'static'
    saved_mode = 'residual' if bool(residual) else 'pinv'
    if saved_assign != assign:
        raise ValueError(
            f'checkpoint structure at {prefix!r} was made with '
            f'assign={saved_assign!r} but this model uses assign={assign!r}: '
            'its merge and reconstruct weights belong to the other '
            f"assignment; set compression assign='{saved_assign}' in the "
            f"config (or prune the dense checkpoint again with "
            f"assign='{assign}')")
    if saved_mode != reconstruct:
        raise ValueError(
            f'checkpoint structure at {prefix!r} was made with '
            f'reconstruct={saved_mode!r} but this model uses '
            f'reconstruct={reconstruct!r}: the merge and reconstruct '
            'weights of one cannot be read with the other; set compression '
            f"reconstruct='{saved_mode}' in the config (or prune the dense "
            f"checkpoint again with reconstruct='{reconstruct}')")


def unit_merge_flops(num_tokens: int, num_prefix: int, num_groups: int,
                     embed_dims: int, reconstructs: int, impl: str,
                     reconstruct: str, assign: str, neighbourhood: int) -> int:
    """FLOPs of one unit's merge and ``reconstructs`` reconstructions of
    ``num_tokens`` patch tokens, as :func:`mmseg_pm.utils.count_flops`
    counts them: the sparse segment sum (2 per source element, prefix
    tokens included), the dense formulation's (K x N) and (N x K)
    products; gathers and scales are element-wise (not counted).
    Content-aware windows add the similarity of every token to its k x k
    candidate centres (2 k^2 C per token), the window sizes (residual) or
    squared weights (pinv, at every reconstruct) summed per image, and,
    dense, products with the prefix tokens' rows and columns."""
    n, c = num_tokens, embed_dims
    if assign == 'content':
        similarity = 2 * n * neighbourhood**2 * c
        if impl == 'dense':
            slots, tokens = num_prefix + num_groups, num_prefix + n
            return similarity + 2 * slots * tokens * c * (1 + reconstructs)
        sums = 1 if reconstruct == 'residual' else reconstructs
        return similarity + 2 * (num_prefix + n) * (c + sums)
    if impl == 'sparse':
        return 2 * (num_prefix + n) * c
    return 2 * num_groups * n * c * (1 + reconstructs)


class ContentContext(NamedTuple):
    """What a content-aware reconstruct needs from its merge: the unit's
    input and its merged form (residual) or the pruned tokens (pinv), and
    the (B, P + N) merged token of every token in each image."""
    inputs: Optional[Tensor]
    merged: Optional[Tensor]
    pruned: Optional[Tensor]
    assign: Tensor


def _normal_tensors():
    """Cached tensors made under ``torch.inference_mode`` could not be
    used by autograd later: make them as normal tensors."""
    return torch.inference_mode(False)


class TokenCompressor(nn.Module):
    """One compressed unit: merge before its first block, reconstruct after
    its last.

    Buffers ``group`` (N,) and ``is_centre`` (N,) hold the structure, so it
    is saved in and restored from checkpoints; their shapes depend only on the
    grid, so a model built from a config loads any structure for that grid.
    ``merge_weight`` and ``reconstruct_weight`` (N,) are the non-zeros of M
    and R: trainable on their fixed support unless ``trainable=False``.
    The buffer ``residual`` records the reconstruction the weights belong to
    (``'residual'``: M~ and R~; ``'pinv'``: M and pinv(M)), so a checkpoint
    is never read with the other formula.

    ``assign='content'``: per image, each kept token joins the most similar
    centre among the windows of its ``neighbourhood`` x ``neighbourhood``
    neighbourhood; its weights start at 1 (plain means; pinv: R's closed
    form per image). The buffer ``content`` records the assignment, so a
    checkpoint is never read with the other one.

    ``num_prefix`` leading tokens (the class token) are windows of their own
    (weight 1). The sparse path keeps them inside its one segment sum and one
    gather (no concatenation) and sends pruned tokens to window 0 with weight
    0 (no spare row to slice off); its row indices are cached per input
    shape.
    """

    def __init__(self,
                 structure: CompressionStructure,
                 impl: str = 'sparse',
                 trainable: bool = True,
                 reconstruct: str = 'residual',
                 assign: str = 'static',
                 neighbourhood: int = 3):
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f'unknown merge impl {impl!r}; use one of {IMPLS}')
        if reconstruct not in RECONSTRUCTS:
            raise ValueError(f'unknown reconstruct {reconstruct!r}; use one '
                             f'of {RECONSTRUCTS}')
        if assign not in ASSIGNS:
            raise ValueError(f'unknown assign {assign!r}; use one of '
                             f'{ASSIGNS}')
        self.impl = impl
        self.assign = assign
        self.neighbourhood = int(neighbourhood)
        # A plain attribute (reading the buffer would break torch.compile
        # graphs); loading refuses checkpoints of the other mode.
        self.reconstruct_mode = reconstruct
        n = structure.num_tokens
        self.register_buffer('grid', torch.tensor(structure.grid))
        self.register_buffer('group', torch.zeros(n, dtype=torch.long))
        self.register_buffer('is_centre', torch.zeros(n, dtype=torch.bool))
        self.register_buffer('residual',
                             torch.tensor(reconstruct == 'residual'))
        self.register_buffer('content', torch.tensor(assign == 'content'))
        self.merge_weight = nn.Parameter(torch.zeros(n),
                                         requires_grad=trainable)
        self.reconstruct_weight = nn.Parameter(torch.zeros(n),
                                               requires_grad=trainable)
        # Derived from the buffers; recomputed after every structure change.
        self.register_buffer('_index', torch.zeros(n, dtype=torch.long),
                             persistent=False)
        self.register_buffer('_kept', torch.zeros(n), persistent=False)
        self.register_buffer('_pruned', torch.zeros(0, dtype=torch.long),
                             persistent=False)
        # window_tables of the structure for the exported merge, the tables
        # flattened into one buffer (so they follow .to(device))
        for name in ('_window_slots', '_window_order'):
            self.register_buffer(name, torch.zeros(0, dtype=torch.long),
                                 persistent=False)
        # content-aware assignment: every window's centre token, and every
        # token's candidate windows (candidate_windows)
        self.register_buffer('_centre_index', torch.zeros(0, dtype=torch.long),
                             persistent=False)
        self.register_buffer('_candidates', torch.zeros(
            n, self.neighbourhood**2, dtype=torch.long), persistent=False)
        self._window_shapes: List[Tuple[int, int]] = []
        self.num_groups = 0
        self.has_pruned = False
        self._rows: Dict[tuple, Tuple[Tensor, Tensor]] = {}
        self.set_structure(structure)

    @property
    def grid_size(self) -> Tuple[int, int]:
        return int(self.grid[0]), int(self.grid[1])

    def set_structure(self, structure: CompressionStructure) -> None:
        """Install ``structure`` and its initial weights: M~ and R~ = 1
        (residual) or M and pinv(M) (pinv); content-aware: 1 for every kept
        token (the windows, and so M's rows, change per image)."""
        if structure.grid != self.grid_size:
            raise ValueError(f'structure grid {structure.grid} does not match '
                             f'this unit\'s grid {self.grid_size}')
        group, weight = structure.group, structure.weight
        k = structure.num_groups
        if self.assign == 'content':
            merge = reconstruct = (group >= 0).float()
        elif self.reconstruct_mode == 'residual':
            merge = mean_merge_weights(group, weight, k)
            reconstruct = (group >= 0).float()
        else:
            merge, reconstruct = weight, reconstruct_weights(group, weight, k)
        with torch.no_grad():
            self.group.copy_(group)
            self.is_centre.zero_()
            self.is_centre[structure.centre] = True
            self.merge_weight.copy_(merge)
            self.reconstruct_weight.copy_(reconstruct)
        self._refresh()

    def structure(self) -> CompressionStructure:
        """The structure as data (merge weights as currently trained)."""
        group = self.group.cpu()
        weight = self.merge_weight.detach().cpu().clone()
        weight[group < 0] = 0
        return CompressionStructure(self.grid_size, group,
                                    torch.nonzero(self.is_centre.cpu()).flatten(),
                                    weight)

    def _refresh(self) -> None:
        self.num_groups = int(self.is_centre.sum())
        kept = self.group >= 0
        self.has_pruned = not bool(kept.all())
        with torch.no_grad():
            # Pruned tokens go to window 0 with weight 0 in the segment sum.
            self._index.copy_(self.group.clamp(min=0))
            self._kept.copy_(kept.float())
            self._pruned = torch.nonzero(~kept).flatten()
            tables, self._window_order = window_tables(self.group)
            self._window_slots = torch.cat([t.flatten() for t in tables])
            self._window_shapes = [tuple(t.shape) for t in tables]
            self._centre_index = torch.nonzero(self.is_centre).flatten()
            self._candidates.copy_(candidate_windows(
                self.group, self.is_centre, self.grid_size,
                self.neighbourhood))
        self._rows.clear()
        # Fail now rather than on the first forward.
        self.structure()

    # ------------------------------------------------------------------
    # sparse path: row indices, cached per input shape
    def _batched_indices(self, batch: int, num_prefix: int
                         ) -> Tuple[Tensor, Tensor]:
        """Rows in the flattened (B * tokens, C) tensors: the merged row of
        every token (merge scatters into it, reconstruct gathers from it),
        and the rows of the pruned tokens."""
        key = (batch, num_prefix, self._index.device)
        cached = None if torch.compiler.is_compiling() else self._rows.get(key)
        if cached is not None:
            return cached
        with _normal_tensors():
            index = with_prefix(self._index, num_prefix)
            groups = num_prefix + self.num_groups
            tokens = index.numel()
            pruned = self._pruned + num_prefix
            rows = (batched_rows(index, batch, groups),
                    batched_rows(pruned, batch, tokens))
        if not torch.compiler.is_compiling():
            if len(self._rows) >= 8:  # a few batch sizes are ever in use
                self._rows.clear()
            self._rows[key] = rows
        return rows

    def _unit_weights(self, num_prefix: int, dtype: torch.dtype
                      ) -> Tuple[Tensor, Tensor]:
        """Merge and reconstruct weights over prefix + patch tokens (zero
        for pruned tokens). Not cached: two (P + N,) products per unit and
        forward, nothing next to its blocks, and always the current
        weights."""
        return tuple(weight_with_prefix(w * self._kept, num_prefix).to(dtype)
                     for w in (self.merge_weight, self.reconstruct_weight))

    # ------------------------------------------------------------------
    def _formulation(self) -> str:
        """The one place the merge's formulation is chosen: ``'dense'``
        (the authors' matrices, asked for with impl='dense'), ``'export'``
        (a sparse unit being exported to ONNX: nothing may write an index
        twice, since onnxruntime's multi-threaded scatter-add loses
        updates; static windows merge by :func:`tabled_segment_sum`,
        content-aware ones by one-hot matrices) or ``'sparse'`` (one
        segment sum; eager and compiled runs, 2-5x faster on CPU).
        Reconstruction gathers (no scatter) unless ``'dense'``, except the
        content-aware one, which follows its merge."""
        if self.impl == 'dense':
            return 'dense'
        return 'export' if torch.compiler.is_exporting() else 'sparse'

    def merge(self, x: Tensor, num_prefix: int = 0) -> Tuple[Tensor, object]:
        """(B, P + N, C) tokens -> (merged (B, P + K, C), context).

        The ``num_prefix`` = P leading tokens are windows of their own.
        ``context`` is what :meth:`reconstruct` needs besides the blocks'
        output: the unit's input and its merged form (residual), or the
        pruned tokens (pinv).
        """
        if self.assign == 'content':
            return self._merge_content(x, num_prefix)
        formulation = self._formulation()
        if formulation == 'dense':
            merged = self._merge_dense(x, num_prefix)
        elif formulation == 'export':
            merged = self._merge_tabled(x, num_prefix)
        else:
            scatter, _ = self._batched_indices(x.shape[0], num_prefix)
            weight, _ = self._unit_weights(num_prefix, x.dtype)
            merged = segment_sum(x, None, weight,
                                 num_prefix + self.num_groups, rows=scatter)
        if self.reconstruct_mode == 'residual':
            return merged, (x, merged)
        return merged, self._pruned_tokens(x, num_prefix)

    def reconstruct(self, y: Tensor, context, num_prefix: int = 0) -> Tensor:
        """(B, P + K, C) blocks' output -> (B, P + N, C) full grid.

        Residual: ``x + R~ (y - M~ x)``; pinv: ``R y`` with the pruned tokens
        put back. ``context`` comes from :meth:`merge`.
        """
        if isinstance(context, ContentContext):
            return self._reconstruct_content(y, context, num_prefix)
        if self.reconstruct_mode == 'residual':
            x, merged = context
            update = self._spread(y - merged, num_prefix)
            if torch.is_grad_enabled() and (update.requires_grad
                                            or x.requires_grad):
                return x + update
            return update.add_(x)  # update is fresh: safe to write in place
        return self._put_back_pruned(self._spread(y, num_prefix), context,
                                     num_prefix)

    def _put_back_pruned(self, x: Tensor, context: Optional[Tensor],
                         num_prefix: int) -> Tensor:
        """pinv: the pruned tokens (``context``) back into ``x``."""
        if context is not None:  # x is fresh: safe to write in place
            if self._formulation() == 'dense':
                x[:, num_prefix:] += context
            else:
                _, pruned = self._batched_indices(x.shape[0], num_prefix)
                x.view(-1, x.shape[-1]).index_copy_(0, pruned, context)
        return x

    def _spread(self, y: Tensor, num_prefix: int) -> Tensor:
        """``R y``: every token gets its window's row of ``y`` times its
        reconstruct weight (0 for pruned tokens); prefix tokens keep theirs."""
        if self._formulation() == 'dense':
            r = reconstruct_matrix(self.group,
                                   self.reconstruct_weight * self._kept,
                                   self.num_groups)
            x = torch.matmul(r.to(y.dtype), y[:, num_prefix:])
            return torch.cat((y[:, :num_prefix], x), dim=1) if num_prefix \
                else x
        gather, _ = self._batched_indices(y.shape[0], num_prefix)
        _, weight = self._unit_weights(num_prefix, y.dtype)
        return gather_scale(y, None, weight, rows=gather)

    def _pruned_tokens(self, x: Tensor, num_prefix: int) -> Optional[Tensor]:
        """The pinv shortcut: the pruned tokens (sparse: their rows; dense:
        the patch tokens masked to them), None when nothing is pruned."""
        if not self.has_pruned:
            return None
        if self._formulation() == 'dense':
            return x[:, num_prefix:] * (1 - self._kept).to(x.dtype)[:, None]
        b, t, c = x.shape
        _, pruned = self._batched_indices(b, num_prefix)
        return x.reshape(b * t, c).index_select(0, pruned)

    def _merge_tabled(self, x: Tensor, num_prefix: int) -> Tensor:
        """The sparse merge as exported (:func:`tabled_segment_sum`): no
        row written twice."""
        slots = self._window_slots.split([h * w for h, w in
                                          self._window_shapes])
        tables = [t.view(shape) for t, shape in zip(slots,
                                                    self._window_shapes)]
        # pruned tokens are in no table: no mask needed on the weights
        return tabled_segment_sum(x, self.merge_weight, tables,
                                  self._window_order, num_prefix)

    def _merge_dense(self, x: Tensor, num_prefix: int) -> Tensor:
        """``M x`` with the authors' explicit (K, N) matrix."""
        m = merge_matrix(self.group, self.merge_weight * self._kept,
                         self.num_groups)
        merged = torch.matmul(m.to(x.dtype), x[:, num_prefix:])
        if num_prefix:
            merged = torch.cat((x[:, :num_prefix], merged), dim=1)
        return merged

    # ------------------------------------------------------------------
    # content-aware assignment
    def _content_slots(self, x: Tensor, num_prefix: int) -> Tensor:
        """(B, P + N) merged token of every token of ``x``: prefix tokens
        their own, patch tokens by :func:`content_assignment`."""
        patches = content_assignment(x[:, num_prefix:], self._centre_index,
                                     self._candidates)
        head = torch.arange(num_prefix, device=x.device)
        return torch.cat((head.expand(x.shape[0], -1),
                          patches + num_prefix), 1)

    def _merge_content(self, x: Tensor, num_prefix: int
                       ) -> Tuple[Tensor, 'ContentContext']:
        """Per-image M x: weighted sums (pinv) or means (residual) of the
        tokens each window got in this image."""
        assign = self._content_slots(x, num_prefix)
        weight, _ = self._unit_weights(num_prefix, x.dtype)
        residual = self.reconstruct_mode == 'residual'
        merged = merge_by_assignment(
            x, assign, weight, num_prefix + self.num_groups, mean=residual,
            dense=self._formulation() != 'sparse')
        if residual:
            return merged, ContentContext(x, merged, None, assign)
        return merged, ContentContext(None, None,
                                      self._pruned_tokens(x, num_prefix),
                                      assign)

    def _reconstruct_content(self, y: Tensor, context: 'ContentContext',
                             num_prefix: int) -> Tensor:
        """R y with the image's assignment: ``x + r_p (y - M~x)_{g(p)}``
        (residual) or ``r_p / sum_{i in g(p)} w_i^2 y_{g(p)}`` plus the
        pruned tokens (pinv, the closed-form pseudo-inverse per image)."""
        merge_w, spread_w = self._unit_weights(num_prefix, y.dtype)
        residual = self.reconstruct_mode == 'residual'
        out = spread_by_assignment(
            y - context.merged if residual else y, context.assign, spread_w,
            None if residual else merge_w,
            dense=self._formulation() != 'sparse')
        if residual:
            return context.inputs + out
        return self._put_back_pruned(out, context.pruned, num_prefix)

    def source(self, batch: int, num_prefix: int = 0,
               context=None) -> Tensor:
        """(B, P + N) merged token of every original token (-1: pruned);
        content-aware: of this image (``context`` from :meth:`merge`)."""
        if isinstance(context, ContentContext):
            kept = weight_with_prefix(self._kept, num_prefix) > 0
            return torch.where(kept, context.assign, -1)
        patches = torch.where(self.group >= 0, self.group + num_prefix,
                              self.group)
        head = torch.arange(num_prefix, device=patches.device)
        return torch.cat((head, patches)).expand(batch, -1)

    # ------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Refused before any tensor is copied; the derived buffers are
        # rebuilt after (mmengine's loader skips load hooks).
        check_saved_unit(state_dict, prefix, self.grid_size, self.assign,
                         self.reconstruct_mode)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._refresh()

    def extra_repr(self) -> str:
        h, w = self.grid_size
        n = h * w
        pruned = int((self.group < 0).sum())
        return (f'grid={h}x{w}, centres={self.num_groups}, '
                f'merged={n - self.num_groups - pruned}, pruned={pruned}, '
                f'reconstruct={self.reconstruct_mode}, assign={self.assign}'
                + (f' (k={self.neighbourhood})' if self.assign == 'content'
                   else '') + f', impl={self.impl}, '
                f'trainable={self.merge_weight.requires_grad}')


class PruneAndMerge(nn.ModuleDict, TokenReducer):
    """Prune and Merge as a :class:`TokenReducer`: one
    :class:`TokenCompressor` per unit, keyed by the unit's first block (the
    keys of the checkpoints: ``token_compressors.<first>.*``, its
    ``state_dict_name`` being :data:`~.reducer.STRUCTURES_NAME`).

    A unit (first, last) merges before its first block, runs its blocks on
    the centres and reconstructs after its last; an output inside a unit is
    reconstructed from the merged stream. Its structures are static.
    """

    method = 'pm'
    state_dict_name = STRUCTURES_NAME
    static = True

    def __init__(self, units: Sequence[Tuple[int, int]],
                 structure: CompressionStructure, num_prefix: int = 1,
                 impl: str = 'sparse', trainable: bool = True,
                 reconstruct: str = 'residual', assign: str = 'static',
                 neighbourhood: int = 3):
        super().__init__({str(first): TokenCompressor(
            structure, impl, trainable, reconstruct, assign, neighbourhood)
            for first, _ in units})
        self.units = [(int(a), int(b)) for a, b in units]
        self.unit_last = dict(self.units)  # first block -> last block
        self.num_prefix = num_prefix

    def compressor(self, first: int) -> TokenCompressor:
        return self[str(first)]

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

    # ------------------------------------------------------------ forward
    def start(self, x: Tensor, hw: Tuple[int, int]):
        return None  # (last block, compressor, context) inside a unit

    def run_block(self, i: int, block: nn.Module, x: Tensor, state):
        if self.bypass:
            return block(x), None
        if i in self.unit_last:
            compressor = self.compressor(i)
            batch = x.shape[0]
            x, context = compressor.merge(x, self.num_prefix)
            if self.trace_source:  # the source map is only built on request
                self.record_source(i, compressor.source(
                    batch, self.num_prefix, context))
            state = (self.unit_last[i], compressor, context)
        x = block(x)
        if state is not None and i == state[0]:
            _, compressor, context = state
            return compressor.reconstruct(x, context, self.num_prefix), None
        return x, state

    def full_grid(self, i: int, x: Tensor, state) -> Tensor:
        if state is None:
            return x
        _, compressor, context = state
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
                comp.assign, comp.neighbourhood)
        return total
