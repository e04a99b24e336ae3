"""Prune and Merge as a token reducer (:class:`PruneAndMerge`): one
:class:`~.unit.TokenCompressor` per unit, and what its merges cost
(:func:`unit_merge_flops`).

The unit's arithmetic lives in :mod:`.unit`, the content-aware assignment
in :mod:`.content`, the low-level operations in :mod:`.ops`.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

from torch import Tensor, nn

from .reducer import STRUCTURES_NAME, TokenReducer
from .structure import CompressionStructure
from .unit import (DEFAULT_ASSIGN, DEFAULT_IMPL, DEFAULT_NEIGHBOURHOOD,
                   DEFAULT_RECONSTRUCT, TokenCompressor)


def unit_merge_flops(num_tokens: int, num_prefix: int, num_groups: int,
                     embed_dims: int, reconstructs: int, impl: str,
                     reconstruct: str, similarity_pairs: int = 0) -> int:
    """FLOPs of one unit's merge and ``reconstructs`` reconstructions of
    ``num_tokens`` patch tokens, as :func:`mmseg_pm.utils.count_flops`
    counts them: the sparse segment sum (2 per source element, prefix
    tokens included), the dense formulation's (K x N) and (N x K)
    products; gathers and scales are element-wise (not counted).
    Content-aware windows (``similarity_pairs`` > 0: the (token, candidate
    window) pairs of the unit) add 2 C per pair, the window totals (and,
    pinv, squared weights) summed per image, and, dense, products with the
    prefix tokens' rows and columns."""
    n, c = num_tokens, embed_dims
    if similarity_pairs:
        similarity = 2 * similarity_pairs * c
        if impl == 'dense':
            slots, tokens = num_prefix + num_groups, num_prefix + n
            return similarity + 2 * slots * tokens * c * (1 + reconstructs)
        sums = 1 if reconstruct == 'residual' else 2
        return similarity + 2 * (num_prefix + n) * (c + sums)
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
    reconstructed from the merged stream. Its structures are static.
    """

    method = 'pm'
    state_dict_name = STRUCTURES_NAME
    static = True

    def __init__(self, units: Sequence[Tuple[int, int]],
                 structure: CompressionStructure, num_prefix: int = 1,
                 impl: str = DEFAULT_IMPL, trainable: bool = True,
                 reconstruct: str = DEFAULT_RECONSTRUCT,
                 assign: str = DEFAULT_ASSIGN,
                 neighbourhood: int = DEFAULT_NEIGHBOURHOOD):
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
                comp.num_similarity_pairs)
        return total
