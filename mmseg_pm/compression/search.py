"""From token scores to one compression structure per unit
(docs/prune_and_merge.md section 2).

A compressed unit (one block, or a span of blocks whose scores are
averaged) ranks its N patch tokens. With ``num_keep = int(keep_rate * N)``
(at least 1) and ``num_prune = int(prune_rate * N)``:

* 'global' ranking (the paper's automatic structure): the scores of all U
  units are ranked together; the ``num_keep * U`` highest are centres and
  the ``num_prune * U`` lowest are pruned, so each unit gets its own counts.
* 'layer' ranking: the same within each unit (exactly ``num_keep`` centres
  and ``num_prune`` pruned tokens in every unit).

The ranking is one stable sort by descending score: among equal scores the
lower index (earlier unit, then raster order) ranks higher, so ties never
change the counts, and a token is never both kept and pruned. A unit that
the global ranking leaves without a centre gets its best token as one (the
only case where the total exceeds ``num_keep * U``). Everything that is
neither a centre nor pruned is merged by :func:`build_structure`'s rule.

The ranking decides *how many* centres each unit gets; ``placement``
decides *where* they go (the pruned tokens are the ranking's in every case):

* 'score': the top-ranked tokens themselves (the authors' structure). Raw
  scores cluster, leaving regions without a centre whose tokens travel far.
* 'spread': the grid is cut into as many cells as the unit has centres
  (:func:`grid_cells`); each cell's best-scoring token is its centre.
* 'lattice': the token nearest each cell's middle (scores unused).
* 'random': centres drawn uniformly (seeded, a new draw for every unit).
  With the residual reconstruction this is the best of the four in the
  quality study: every unit's windows differ, so no region is merged the
  same way in every block (docs/residual.md).
"""
from __future__ import annotations

import math
from typing import List, Optional, Protocol, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .structure import (PLACEMENTS, CompressionStructure, StructureRecipe,
                        build_structure)

RANKINGS = ('global', 'layer')
# The project's default placement: the best of the four in the quality
# study (benchmarks/study/table.md; docs/residual.md): at 70 % and 50 % of
# the dense GFLOPs, before and after fine-tuning.
DEFAULT_PLACEMENT = 'random'


def token_budget(num_tokens: int, keep_rate: float,
                 prune_rate: float) -> Tuple[int, int]:
    """(centres, pruned) per unit implied by the rates."""
    return max(1, int(keep_rate * num_tokens)), int(prune_rate * num_tokens)


def unit_scores(scores: Tensor, units: Sequence[Tuple[int, int]]) -> Tensor:
    """(U, N) scores: the mean over each inclusive (first, last) unit."""
    return torch.stack([scores[a:b + 1].mean(dim=0) for a, b in units])


def select_tokens(scores: Tensor, num_keep: int, num_prune: int,
                  ranking: str = 'global') -> Tuple[Tensor, Tensor]:
    """Boolean (U, N) masks of centres and pruned tokens.

    ``num_keep`` and ``num_prune`` are per-unit counts; 'global' ranks all
    U*N scores together, 'layer' each row alone.
    """
    if ranking not in RANKINGS:
        raise ValueError(f'ranking must be one of {RANKINGS}, got {ranking!r}')
    num_units, num_tokens = scores.shape
    if num_keep + num_prune > num_tokens:
        raise ValueError(f'{num_keep} centres + {num_prune} pruned tokens '
                         f'exceed the {num_tokens} tokens of a unit')
    rows = scores.reshape(1, -1) if ranking == 'global' else scores
    order = torch.sort(rows, dim=1, descending=True, stable=True).indices
    factor = num_units if ranking == 'global' else 1
    keep = torch.zeros_like(rows, dtype=torch.bool)
    prune = torch.zeros_like(rows, dtype=torch.bool)
    keep.scatter_(1, order[:, :num_keep * factor], True)
    if num_prune:
        prune.scatter_(1, order[:, -num_prune * factor:], True)
    keep, prune = keep.reshape(scores.shape), prune.reshape(scores.shape)
    for unit in torch.nonzero(~keep.any(dim=1)).flatten().tolist():
        best = int(torch.sort(scores[unit], descending=True,
                              stable=True).indices[0])
        keep[unit, best], prune[unit, best] = True, False
    return keep, prune


def grid_cells(grid: Tuple[int, int], count: int) -> Tensor:
    """(N,) cell of every token: ``count`` non-empty cells tiling the grid.

    The rows are cut into ``r ~ sqrt(count * H / W)`` bands of near-equal
    height and band b into ``c_b`` near-equal columns, the ``c_b`` differing
    by at most one and summing to ``count``; cells are numbered band by band.
    """
    h, w = int(grid[0]), int(grid[1])
    if not 1 <= count <= h * w:
        raise ValueError(f'cannot cut a {h}x{w} grid into {count} cells: '
                         f'the count must be in [1, {h * w}]')
    bands = min(h, count, max(1, round(math.sqrt(count * h / w))))
    while -(-count // bands) > w:  # a band cannot hold more cells than columns
        bands += 1
    xs = torch.arange(w)
    cell = torch.empty(h, w, dtype=torch.long)
    offset = 0
    for b in range(bands):
        top, bottom = b * h // bands, (b + 1) * h // bands
        cols = (b + 1) * count // bands - b * count // bands
        column_cell = xs * cols // w  # 0..cols-1, near-equal widths
        cell[top:bottom] = offset + column_cell[None]
        offset += cols
    return cell.flatten()


def place_centres(scores: Tensor, count: int, grid: Tuple[int, int],
                  excluded: Optional[Tensor] = None,
                  placement: str = DEFAULT_PLACEMENT,
                  seed: int = 0) -> Tensor:
    """Indices of ``count`` centres of one unit (see the module docstring).

    ``excluded`` (N,) bool marks tokens that cannot be centres (pruned ones).
    A cell whose tokens are all excluded gives its centre to the best
    remaining token, so the count is always met when it can be at all.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f'placement must be one of {PLACEMENTS}, got '
                         f'{placement!r}')
    n = scores.numel()
    excluded = torch.zeros(n, dtype=torch.bool) if excluded is None \
        else excluded.bool().cpu()
    available = int((~excluded).sum())
    if not 1 <= count <= available:
        raise ValueError(
            f'cannot place {count} centres: {available} of the {n} tokens '
            'are not pruned; lower keep_rate or prune_rate')
    scores = scores.float().cpu()
    if placement == 'random':
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=generator)
        return order[~excluded[order]][:count]
    if placement == 'score':
        priority = scores
    else:
        cell = grid_cells(grid, count)
        if placement == 'spread':
            priority = scores
        else:  # 'lattice': closeness to the middle of the token's cell
            w = int(grid[1])
            y, x = (torch.arange(n) // w).float(), (torch.arange(n) % w).float()
            cells = torch.zeros(count).index_add(0, cell, torch.ones(n))
            my = torch.zeros(count).index_add(0, cell, y) / cells
            mx = torch.zeros(count).index_add(0, cell, x) / cells
            priority = -((y - my[cell]) ** 2 + (x - mx[cell]) ** 2)
    priority = priority.masked_fill(excluded, -math.inf)
    # Descending priority, ties to the lower index (a stable sort).
    order = torch.sort(priority, descending=True, stable=True).indices
    if placement == 'score':
        return order[:count]
    # The first eligible token of each cell in that order is its centre.
    rank = torch.where(excluded[order], n, torch.arange(n))
    first = torch.full((count, ), n).scatter_reduce(0, cell[order], rank,
                                                    'amin')
    chosen = torch.zeros(n, dtype=torch.bool)
    chosen[order[first[first < n]]] = True
    missing = count - int(chosen.sum())
    if missing:  # cells with only excluded tokens: best remaining tokens
        rest = torch.sort(scores.masked_fill(excluded | chosen, -math.inf),
                          descending=True, stable=True).indices[:missing]
        chosen[rest] = True
    return torch.nonzero(chosen).flatten()


def check_scores(scores: Tensor, num_layers: int, num_tokens: int) -> None:
    if tuple(scores.shape) != (num_layers, num_tokens):
        raise ValueError(f'scores must have shape ({num_layers}, {num_tokens})'
                         f' (blocks x patch tokens), got {tuple(scores.shape)}')
    if not torch.isfinite(scores).all() or (scores < 0).any():
        raise ValueError('scores must be finite and non-negative')


class StructureSettings(Protocol):
    """What a search reads of a Prune-and-Merge config (``merge.PMConfig``;
    named by its fields so that the search depends on no method)."""

    units: Sequence[Tuple[int, int]]
    keep_rate: float
    prune_rate: float
    rule: str

    def validate(self) -> None:
        """Refuse settings out of range."""


def search_structures(scores: Tensor,
                      config: StructureSettings,
                      grid: Tuple[int, int],
                      ranking: str = 'global',
                      placement: str = DEFAULT_PLACEMENT,
                      seed: int = 0) -> List[CompressionStructure]:
    """One structure per compressed unit of ``config``, in block order.

    Args:
        scores: (num_layers, N) token scores (:func:`token_scores`); only the
            rows of compressed blocks are used.
        config: which units, keep_rate, prune_rate and assignment rule.
        grid: (H, W) token grid, N = H * W.
        ranking: 'global' or 'layer' (see the module docstring).
        placement: where each unit's centres go: 'score', 'spread',
            'lattice' or 'random' (see the module docstring); the default
            is the project's, that of tools/prune.py.
        seed: the random placement's seed (unit u uses ``seed + u``).
    """
    if ranking not in RANKINGS:
        raise ValueError(f'ranking must be one of {RANKINGS}, got {ranking!r}')
    if placement not in PLACEMENTS:
        raise ValueError(f'placement must be one of {PLACEMENTS}, got '
                         f'{placement!r}')
    config.validate()
    num_tokens = int(grid[0]) * int(grid[1])
    units = list(config.units)
    last = max(b for _, b in units)
    if scores.ndim != 2 or scores.shape[0] <= last:
        raise ValueError(f'scores of shape {tuple(scores.shape)} do not cover '
                         f'compressed block {last}')
    check_scores(scores, scores.shape[0], num_tokens)
    per_unit = unit_scores(scores.float().cpu(), units)
    dead = [units[u] for u in range(len(units)) if per_unit[u].max() <= 0]
    if dead:
        raise ValueError(
            f'the scores of compressed units {dead} are all zero, so they '
            'cannot rank tokens (the scoring loss had no gradient through '
            'their attention); score with more iterations or other data')
    num_keep, num_prune = token_budget(num_tokens, config.keep_rate,
                                       config.prune_rate)
    keep, prune = select_tokens(per_unit, num_keep, num_prune, ranking)
    structures = []
    for u in range(len(units)):
        centres = torch.nonzero(keep[u]).flatten()
        if placement != 'score':
            centres = place_centres(per_unit[u], centres.numel(), grid,
                                    prune[u], placement, seed + u)
        structures.append(build_structure(grid, centres, prune[u],
                                          per_unit[u], config.rule,
                                          placement, seed + u))
    return structures


def derive_structure(structure: CompressionStructure,
                     grid: Tuple[int, int]) -> CompressionStructure:
    """The structure the same rule makes on another ``grid``: the recipe's
    scores resampled to it (bilinear), the same fractions of centres and
    pruned tokens (the lowest scores pruned), its placement (a random one
    drawn again on the new grid with the same seed) and assignment rule.
    A structure without a recipe (converted from the authors' code) is
    taken as a lattice of its centre count."""
    h, w = structure.grid
    gh, gw = int(grid[0]), int(grid[1])
    recipe = structure.recipe or StructureRecipe.lattice(h * w)
    n = gh * gw
    ratio = n / structure.num_tokens
    keep = min(n, max(1, round(structure.num_groups * ratio)))
    prune = min(n - keep, round(structure.num_pruned * ratio))
    scores = F.interpolate(recipe.scores.view(1, 1, h, w), size=(gh, gw),
                           mode='bilinear', align_corners=False)
    scores = scores.flatten().clamp_min(0)
    pruned = torch.zeros(n, dtype=torch.bool)
    pruned[torch.sort(scores, stable=True).indices[:prune]] = True
    centres = place_centres(scores, keep, (gh, gw), pruned,
                            recipe.placement, recipe.seed)
    return build_structure((gh, gw), centres, pruned, scores, recipe.rule,
                           recipe.placement, recipe.seed)


def layer_token_counts(structures: Sequence[CompressionStructure],
                       units: Sequence[Tuple[int, int]], num_layers: int,
                       num_tokens: int, num_prefix: int = 1) -> List[dict]:
    """Per block: its unit, centres, merged, pruned and the number of tokens
    it runs on (centres + class token; all tokens for dense blocks)."""
    rows = [dict(layer=i, unit=None, centres=num_tokens, merged=0, pruned=0,
                 tokens=num_tokens + num_prefix) for i in range(num_layers)]
    for (first, last), s in zip(units, structures):
        for i in range(first, last + 1):
            rows[i] = dict(layer=i, unit=(first, last), centres=s.num_groups,
                           merged=s.num_merged, pruned=s.num_pruned,
                           tokens=s.num_groups + num_prefix)
    return rows
