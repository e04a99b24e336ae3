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

from typing import Tuple

import torch
from torch import Tensor, nn

from .structure import CompressionStructure, reconstruct_weights

IMPLS = ('sparse', 'dense')


def merge_sparse(x: Tensor, slot: Tensor, weight: Tensor,
                 num_groups: int) -> Tensor:
    """Weighted segment sum of tokens ``x`` (B, N, C) into ``num_groups``.

    ``slot[p]`` is the group of token p, or ``num_groups`` for pruned
    tokens (a spare row that is dropped).
    """
    b, _, c = x.shape
    out = x.new_zeros(b, num_groups + 1, c)
    out = out.index_add(1, slot, x * weight.to(x.dtype)[:, None])
    return out[:, :num_groups]


def reconstruct_sparse(y: Tensor, gather: Tensor, weight: Tensor) -> Tensor:
    """``x[p] = weight[p] * y[gather[p]]``: the pseudo-inverse of a merge."""
    return y.index_select(1, gather) * weight.to(y.dtype)[:, None]


def merge_matrix(group: Tensor, weight: Tensor, num_groups: int) -> Tensor:
    """Dense (K, N) merge matrix with ``weight[p]`` at ``(group[p], p)``."""
    kept = torch.nonzero(group >= 0).flatten()
    m = weight.new_zeros(num_groups, group.numel())
    return m.index_put((group[kept], kept), weight[kept])


def reconstruct_matrix(group: Tensor, weight: Tensor, num_groups: int) -> Tensor:
    """Dense (N, K) reconstruct matrix with ``weight[p]`` at ``(p, group[p])``."""
    return merge_matrix(group, weight, num_groups).t()


class TokenCompressor(nn.Module):
    """One compressed unit: merge before its first block, reconstruct after
    its last.

    Buffers ``group`` (N,) and ``is_centre`` (N,) hold the structure, so it
    is saved in and restored from checkpoints; their shapes depend only on the
    grid, so a model built from a config loads any structure for that grid.
    ``merge_weight`` and ``reconstruct_weight`` (N,) are the non-zeros of M
    and R: trainable on their fixed support unless ``trainable=False``.
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
        self.register_buffer('_slot', torch.zeros(n, dtype=torch.long),
                             persistent=False)
        self.register_buffer('_gather', torch.zeros(n, dtype=torch.long),
                             persistent=False)
        self.register_buffer('_kept', torch.zeros(n), persistent=False)
        self.num_groups = 0
        self.has_pruned = False
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
            self._slot.copy_(torch.where(kept, self.group,
                                         torch.full_like(self.group,
                                                         self.num_groups)))
            self._gather.copy_(self.group.clamp(min=0))
            self._kept.copy_(kept.float())
        # Fail now rather than on the first forward.
        self.structure()

    def merge(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """(B, N, C) patch tokens -> (merged (B, K, C), pruned shortcut)."""
        weight = self.merge_weight * self._kept
        if self.impl == 'sparse':
            merged = merge_sparse(x, self._slot, weight, self.num_groups)
        else:
            m = merge_matrix(self.group, weight, self.num_groups)
            merged = torch.matmul(m.to(x.dtype), x)
        shortcut = x * (1 - self._kept).to(x.dtype)[:, None] \
            if self.has_pruned else None
        return merged, shortcut

    def reconstruct(self, y: Tensor, shortcut: Tensor | None) -> Tensor:
        """(B, K, C) block output -> (B, N, C) full grid (+ pruned tokens)."""
        weight = self.reconstruct_weight * self._kept
        if self.impl == 'sparse':
            x = reconstruct_sparse(y, self._gather, weight)
        else:
            r = reconstruct_matrix(self.group, weight, self.num_groups)
            x = torch.matmul(r.to(y.dtype), y)
        return x if shortcut is None else x + shortcut

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

