"""Merge tokens into centres and reconstruct the full grid.

Pure functions first (sparse and dense formulations of the same
arithmetic), then :class:`TokenCompressor`, the small module that holds one
unit's structure as buffers and its trainable weights as parameters.

Sparse: ``x_small[k] = sum_{p in k} w_p x_p`` is a segment sum (index_add)
and ``x[p] = r_p y[group[p]]`` a gather and a scale. Dense: explicit M (K x N)
and R (N x K) matrix products, as the authors' code does; kept as the
reference tests compare against and the baseline benchmarks beat.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from .structure import CompressionStructure, reconstruct_weights

IMPLS = ('sparse', 'dense')


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


def merge_sparse(x: Tensor, slot: Tensor, weight: Tensor,
                 num_groups: int) -> Tensor:
    """Weighted segment sum of tokens ``x`` (B, N, C) into ``num_groups``.

    ``slot[p]`` is the group of token p, or ``num_groups`` for pruned
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

    ``num_prefix`` leading tokens (the class token) pass through merge and
    reconstruct unchanged. The sparse path keeps them inside its one segment
    sum and one gather (no concatenation), sends pruned tokens to group 0
    with weight 0 (no spare row to slice off) and keeps only the pruned
    tokens as the shortcut; index and weight vectors are cached per input
    shape, and the weights too while they need no gradient.
    """

    def __init__(self,
                 structure: CompressionStructure,
                 impl: str = 'sparse',
                 trainable: bool = True):
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f'unknown merge impl {impl!r}; use one of {IMPLS}')
        self.impl = impl
        n = structure.num_tokens
        self.register_buffer('grid', torch.tensor(structure.grid))
        self.register_buffer('group', torch.zeros(n, dtype=torch.long))
        self.register_buffer('is_centre', torch.zeros(n, dtype=torch.bool))
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
        self.num_groups = 0
        self.has_pruned = False
        self._rows: Dict[tuple, Tuple[Tensor, Tensor]] = {}
        self._weights: Dict[tuple, Tuple[Tensor, Tensor]] = {}
        self.set_structure(structure)

    @property
    def grid_size(self) -> Tuple[int, int]:
        return int(self.grid[0]), int(self.grid[1])

    def set_structure(self, structure: CompressionStructure) -> None:
        """Install ``structure`` and its initial weights (M and pinv(M))."""
        if structure.grid != self.grid_size:
            raise ValueError(f'structure grid {structure.grid} does not match '
                             f'this unit\'s grid {self.grid_size}')
        with torch.no_grad():
            self.group.copy_(structure.group)
            self.is_centre.zero_()
            self.is_centre[structure.centre] = True
            self.merge_weight.copy_(structure.weight)
            self.reconstruct_weight.copy_(
                reconstruct_weights(structure.group, structure.weight,
                                    structure.num_groups))
        self._refresh()

    def structure(self) -> CompressionStructure:
        """The structure as data (weights as currently trained)."""
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
            # Pruned tokens go to group 0 with weight 0 in the segment sum.
            self._index.copy_(self.group.clamp(min=0))
            self._kept.copy_(kept.float())
            self._pruned = torch.nonzero(~kept).flatten()
        self._rows.clear()
        self._weights.clear()
        # Fail now rather than on the first forward.
        self.structure()

    # ------------------------------------------------------------------
    # sparse path: per-shape indices and per-version weights, cached
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
        """Merge and reconstruct weights over prefix + patch tokens; cached
        (one entry, keyed by the parameters' storage and version) while
        no gradient flows to them."""
        def compute():
            return tuple(
                weight_with_prefix(w * self._kept, num_prefix).to(dtype)
                for w in (self.merge_weight, self.reconstruct_weight))

        needs_grad = torch.is_grad_enabled() and (
            self.merge_weight.requires_grad
            or self.reconstruct_weight.requires_grad)
        if needs_grad or torch.compiler.is_compiling():
            return compute()
        key = (num_prefix, dtype, self._kept.device,
               self.merge_weight.data_ptr(), self.merge_weight._version,
               self.reconstruct_weight.data_ptr(),
               self.reconstruct_weight._version)
        if key not in self._weights:
            with _normal_tensors(), torch.no_grad():
                self._weights.clear()
                self._weights[key] = compute()
        return self._weights[key]

    # ------------------------------------------------------------------
    def merge(self, x: Tensor, num_prefix: int = 0
              ) -> Tuple[Tensor, Optional[Tensor]]:
        """(B, P + N, C) tokens -> (merged (B, P + K, C), pruned shortcut).

        The ``num_prefix`` = P leading tokens are passed through.
        """
        if self.impl == 'dense':
            return self._merge_dense(x, num_prefix)
        b, t, c = x.shape
        scatter, pruned = self._batched_indices(b, num_prefix)
        weight, _ = self._unit_weights(num_prefix, x.dtype)
        merged = segment_sum(x, None, weight, num_prefix + self.num_groups,
                             rows=scatter)
        shortcut = x.reshape(b * t, c).index_select(0, pruned) \
            if self.has_pruned else None
        return merged, shortcut

    def reconstruct(self, y: Tensor, shortcut: Optional[Tensor],
                    num_prefix: int = 0) -> Tensor:
        """(B, P + K, C) block output -> (B, P + N, C) full grid, with the
        pruned tokens of ``shortcut`` put back."""
        if self.impl == 'dense':
            return self._reconstruct_dense(y, shortcut, num_prefix)
        b, _, c = y.shape
        gather, pruned = self._batched_indices(b, num_prefix)
        _, weight = self._unit_weights(num_prefix, y.dtype)
        x = gather_scale(y, None, weight, rows=gather)
        if shortcut is not None:  # x is fresh: safe to write in place
            x.view(-1, c).index_copy_(0, pruned, shortcut)
        return x

    # ------------------------------------------------------------------
    # dense path: the authors' explicit matrices (reference and baseline)
    def _merge_dense(self, x: Tensor, num_prefix: int
                     ) -> Tuple[Tensor, Optional[Tensor]]:
        patches = x[:, num_prefix:]
        m = merge_matrix(self.group, self.merge_weight * self._kept,
                         self.num_groups)
        merged = torch.matmul(m.to(x.dtype), patches)
        shortcut = patches * (1 - self._kept).to(x.dtype)[:, None] \
            if self.has_pruned else None
        if num_prefix:
            merged = torch.cat((x[:, :num_prefix], merged), dim=1)
        return merged, shortcut

    def _reconstruct_dense(self, y: Tensor, shortcut: Optional[Tensor],
                           num_prefix: int) -> Tensor:
        r = reconstruct_matrix(self.group, self.reconstruct_weight * self._kept,
                               self.num_groups)
        x = torch.matmul(r.to(y.dtype), y[:, num_prefix:])
        if shortcut is not None:
            x = x + shortcut
        if num_prefix:
            x = torch.cat((y[:, :num_prefix], x), dim=1)
        return x

    # ------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Refuse another grid's structure before any tensor is copied (a
        # shape mismatch would only be a warning under non-strict loading),
        # and validate what was loaded (mmengine's loader skips load hooks).
        saved = state_dict.get(prefix + 'grid')
        if saved is not None and tuple(int(v) for v in saved) != self.grid_size:
            raise ValueError(
                f'checkpoint structure at {prefix!r} is for a '
                f'{int(saved[0])}x{int(saved[1])} token grid but this model '
                f'uses {self.grid_size[0]}x{self.grid_size[1]}; set the '
                'backbone img_size to the size the structure was built for '
                '(grid x patch_size)')
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._refresh()

    def extra_repr(self) -> str:
        h, w = self.grid_size
        n = h * w
        pruned = int((self.group < 0).sum())
        return (f'grid={h}x{w}, centres={self.num_groups}, '
                f'merged={n - self.num_groups - pruned}, pruned={pruned}, '
                f'impl={self.impl}, '
                f'trainable={self.merge_weight.requires_grad}')
