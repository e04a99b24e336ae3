"""Compression structures: which patch tokens are centres, merged or pruned.

A structure describes one compressed unit (a single block, or a span of
blocks) on an H x W patch grid in raster order (token ``p = row * W + col``).
It is plain data, validated on construction, independent of any model:

* ``group[p]``  window (0..K-1) that token p is merged into, -1 if pruned;
* ``centre[k]`` token index of window k's centre, strictly increasing;
* ``weight[p]`` merge weight w_p: 0 for pruned tokens; as built, 1 at
  centres and S_p / S_centre for merged tokens (docs/prune_and_merge.md section
  3). Weights are trainable, so a fine-tuned structure may hold other values.

The merge matrix M (K x N) holds ``weight[p]`` at ``(group[p], p)``. The
authors' reconstruct matrix is its pseudo-inverse, which for disjoint
windows is ``R[p, k] = weight[p] / sum_{i in k} weight[i]**2`` (see
:func:`reconstruct_weights`). The residual reconstruct (this project's
default, docs/residual.md) merges with M's rows normalised to sum 1
(:func:`mean_merge_weights`) and spreads each window's *update* back to its
members with weight 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

ASSIGN_RULES = ('row', 'nearest')
# the authors' rule, the default of every layer (PMConfig.rule too)
DEFAULT_RULE = 'row'
# where a unit's centres go (compression/search.py says how each works)
PLACEMENTS = ('score', 'spread', 'lattice', 'random')


@dataclass(frozen=True, eq=False)
class StructureRecipe:
    """How a structure was made, so that the same rule can make one for
    another grid (:func:`mmseg_pm.compression.search.derive_structure`):
    its ``placement`` of centres (with its ``seed``), the (N,) token
    ``scores`` that ranked and weighted them, and its assignment
    ``rule``."""

    placement: str
    seed: int
    scores: Tensor
    rule: str = DEFAULT_RULE

    @classmethod
    def lattice(cls, num_tokens: int) -> 'StructureRecipe':
        """What a structure without a recipe (converted from the authors'
        code, or saved before recipes) is taken as: a lattice of its
        centre count."""
        return cls('lattice', 0, torch.ones(num_tokens))

    def __post_init__(self):
        object.__setattr__(self, 'seed', int(self.seed))
        object.__setattr__(self, 'scores',
                           self.scores.detach().float().cpu().flatten())
        if self.placement not in PLACEMENTS:
            raise ValueError(f'placement must be one of {PLACEMENTS}, got '
                             f'{self.placement!r}')
        if self.rule not in ASSIGN_RULES:
            raise ValueError(f'rule must be one of {ASSIGN_RULES}, got '
                             f'{self.rule!r}')


@dataclass(frozen=True, eq=False)
class CompressionStructure:
    """Token roles of one compressed unit on an ``grid = (H, W)`` patch grid."""

    grid: Tuple[int, int]
    group: Tensor
    centre: Tensor
    weight: Tensor
    # how it was made (None: unknown, e.g. converted from the authors')
    recipe: Optional[StructureRecipe] = None

    def __post_init__(self):
        object.__setattr__(self, 'grid', (int(self.grid[0]), int(self.grid[1])))
        object.__setattr__(self, 'group', self.group.detach().long().cpu())
        object.__setattr__(self, 'centre', self.centre.detach().long().cpu())
        object.__setattr__(self, 'weight',
                           self.weight.detach().float().cpu())
        self.validate()

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_groups(self) -> int:
        return int(self.centre.numel())

    @property
    def pruned(self) -> Tensor:
        return self.group < 0

    @property
    def num_pruned(self) -> int:
        return int(self.pruned.sum())

    @property
    def num_merged(self) -> int:
        return self.num_tokens - self.num_groups - self.num_pruned

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistency found."""
        h, w = self.grid
        n = h * w
        if h <= 0 or w <= 0:
            raise ValueError(f'grid must be positive, got {self.grid}')
        for name in ('group', 'weight'):
            shape = tuple(getattr(self, name).shape)
            if shape != (n, ):
                raise ValueError(f'{name} must have shape ({n},) for grid '
                                 f'{self.grid}, got {shape}')
        if self.centre.ndim != 1 or self.centre.numel() == 0:
            raise ValueError('a structure needs at least one centre, got '
                             f'centre of shape {tuple(self.centre.shape)}')
        k = self.num_groups
        if (self.centre < 0).any() or (self.centre >= n).any():
            raise ValueError(f'centre indices must lie in [0, {n})')
        if k > 1 and not bool((self.centre[1:] > self.centre[:-1]).all()):
            raise ValueError('centre indices must be strictly increasing')
        if (self.group < -1).any() or (self.group >= k).any():
            raise ValueError(f'window ids (group) must lie in [-1, {k}) for '
                             f'{k} centres')
        if not torch.equal(self.group[self.centre], torch.arange(k)):
            raise ValueError('each centre must belong to its own group '
                             '(group[centre[k]] == k)')
        if not torch.isfinite(self.weight).all():
            raise ValueError('weights must be finite')
        if torch.any(self.weight[self.pruned] != 0):
            raise ValueError('pruned tokens must have weight 0')
        if self.recipe is not None and self.recipe.scores.shape != (n, ):
            raise ValueError(f'recipe scores must have shape ({n},) for grid '
                             f'{self.grid}, got '
                             f'{tuple(self.recipe.scores.shape)}')

    def tokens_per_group(self) -> Tensor:
        kept = self.group[~self.pruned]
        return torch.bincount(kept, minlength=self.num_groups)

    def summary(self) -> str:
        return (f'grid {self.grid[0]}x{self.grid[1]}: {self.num_groups} '
                f'centres, {self.num_merged} merged, {self.num_pruned} '
                'pruned')


def reconstruct_weights(group: Tensor, weight: Tensor, num_groups: int) -> Tensor:
    """Closed-form pseudo-inverse of a merge with disjoint windows.

    Returns ``r`` with ``r[p] = weight[p] / sum_{i in group(p)} weight[i]**2``
    (0 for pruned tokens), so that ``R[p, group[p]] = r[p]`` and ``M R = I``.
    """
    kept = group >= 0
    norm = torch.zeros(num_groups, dtype=weight.dtype, device=weight.device)
    norm = norm.index_add(0, group[kept], weight[kept]**2)
    r = torch.zeros_like(weight)
    r[kept] = weight[kept] / norm[group[kept]]
    return r


def mean_merge_weights(group: Tensor, weight: Tensor,
                       num_groups: int) -> Tensor:
    """Merge weights normalised per window to sum 1: the merged token is the
    weighted mean of its window (M's rows normalised; 0 for pruned tokens).
    A window whose weights sum to 0 gets uniform weights."""
    kept = group >= 0
    ones = torch.ones_like(weight)
    total = torch.zeros(num_groups, dtype=weight.dtype, device=weight.device)
    total = total.index_add(0, group[kept], weight[kept])
    count = torch.zeros_like(total).index_add(0, group[kept], ones[kept])
    out = torch.zeros_like(weight)
    g = group[kept]
    uniform = total[g] == 0
    out[kept] = torch.where(uniform, 1 / count[g],
                            weight[kept] / torch.where(uniform, 1., total[g]))
    return out


def row_rule_groups(centre: Tensor, grid: Tuple[int, int]) -> Tensor:
    """Window of every token under the authors' 'row' rule.

    Centres sorted in raster order split the token sequence into intervals;
    the boundary between centres c_i < c_{i+1} is the midpoint
    ``ceil((c_i + c_{i+1}) / 2)`` but never past the end of c_i's image
    row (the released code let windows run into the next row).
    """
    h, w = grid
    c = centre.long()
    if c.numel() > 1:
        midpoint = torch.div(c[:-1] + c[1:] + 1, 2, rounding_mode='floor')
        row_end = (torch.div(c[:-1], w, rounding_mode='floor') + 1) * w
        bounds = torch.minimum(midpoint, row_end)
    else:
        bounds = c.new_zeros(0)
    tokens = torch.arange(h * w)
    return torch.searchsorted(bounds, tokens, right=True)


def nearest_rule_groups(centre: Tensor, grid: Tuple[int, int]) -> Tensor:
    """Window of every token: the nearest centre on the 2-D grid.

    Euclidean distance between grid cells; ties go to the centre that comes
    first in raster order.
    """
    h, w = grid
    tokens = torch.arange(h * w)
    ty, tx = tokens // w, tokens % w
    cy, cx = centre.long() // w, centre.long() % w
    dist = (ty[:, None] - cy[None]) ** 2 + (tx[:, None] - cx[None]) ** 2
    return dist.argmin(dim=1)  # first minimum = lowest centre index


def assign_groups(centre: Tensor, grid: Tuple[int, int], rule: str) -> Tensor:
    if rule == 'row':
        return row_rule_groups(centre, grid)
    if rule == 'nearest':
        return nearest_rule_groups(centre, grid)
    raise ValueError(f"unknown assignment rule {rule!r}; use one of "
                     f"{ASSIGN_RULES}")


def build_structure(grid: Tuple[int, int],
                    centre: Tensor,
                    pruned: Optional[Tensor] = None,
                    scores: Optional[Tensor] = None,
                    rule: str = DEFAULT_RULE,
                    placement: Optional[str] = None,
                    seed: int = 0) -> CompressionStructure:
    """Assign every non-pruned token to a centre and weight it.

    Args:
        grid: (H, W) patch grid.
        centre: indices of the centre tokens (any order, unique).
        pruned: indices (or an (N,) bool mask) of tokens that bypass the
            block; they may not be centres.
        scores: (N,) non-negative token scores; ``weight = S_p / S_centre``.
            ``None`` gives every merged token weight 1. A window whose centre
            scores 0 falls back to weight 1 for its members.
        rule: 'row' (the authors' rule) or 'nearest' (2-D nearest centre).
        placement, seed: how ``centre`` was placed (recorded as the
            structure's :class:`StructureRecipe`, with ``scores``; None:
            not recorded).
    """
    h, w = int(grid[0]), int(grid[1])
    n = h * w
    centre = torch.as_tensor(centre).long().flatten().cpu()
    centre_sorted = torch.unique(centre)  # sorted, raster order
    if centre_sorted.numel() != centre.numel():
        raise ValueError('centre indices must be unique')
    pruned_mask = torch.zeros(n, dtype=torch.bool)
    if pruned is not None:
        pruned = torch.as_tensor(pruned).cpu()
        if pruned.dtype == torch.bool:
            if pruned.shape != (n, ):
                raise ValueError(f'pruned mask must have shape ({n},)')
            pruned_mask = pruned.clone()
        else:
            pruned_mask[pruned.long().flatten()] = True
    if pruned_mask[centre_sorted].any():
        raise ValueError('a token cannot be both a centre and pruned')
    group = assign_groups(centre_sorted, (h, w), rule)
    group[pruned_mask] = -1
    weight = torch.ones(n)
    if scores is not None:
        scores = torch.as_tensor(scores).float().flatten().cpu()
        if scores.shape != (n, ):
            raise ValueError(f'scores must have shape ({n},), '
                             f'got {tuple(scores.shape)}')
        if (scores < 0).any() or not torch.isfinite(scores).all():
            raise ValueError('scores must be finite and non-negative')
        centre_score = scores[centre_sorted][group.clamp(min=0)]
        ratio = scores / centre_score.clamp(min=torch.finfo().tiny)
        # A merged token with score 0 keeps a small positive weight so its
        # reconstruction is not exactly zero; a zero-score centre gives its
        # whole window uniform weights.
        ratio = ratio.clamp(min=1e-3)
        weight = torch.where(centre_score > 0, ratio, torch.ones_like(ratio))
    weight[centre_sorted] = 1.0
    weight[pruned_mask] = 0.0
    recipe = None if placement is None else StructureRecipe(
        placement, seed, torch.ones(n) if scores is None else scores, rule)
    return CompressionStructure((h, w), group, centre_sorted, weight, recipe)


def lattice_centres(grid: Tuple[int, int], keep_rate: float) -> Tensor:
    """Centres on a regular lattice with about ``keep_rate * N`` points.

    The built-in structure used until token scores exist: rows and columns
    are each thinned by ``sqrt(keep_rate)``, spread evenly over the grid.
    """
    if not 0 < keep_rate <= 1:
        raise ValueError(f'keep_rate must be in (0, 1], got {keep_rate}')
    h, w = grid
    rows = min(h, max(1, round(h * math.sqrt(keep_rate))))
    cols = min(w, max(1, round(w * math.sqrt(keep_rate))))
    ys = ((torch.arange(rows) + 0.5) * h / rows).floor().long()
    xs = ((torch.arange(cols) + 0.5) * w / cols).floor().long()
    return (ys[:, None] * w + xs[None]).flatten()


def lattice_structure(grid: Tuple[int, int],
                      keep_rate: float,
                      rule: str = DEFAULT_RULE) -> CompressionStructure:
    """The deterministic built-in structure: lattice centres, no pruning."""
    return build_structure(grid, lattice_centres(grid, keep_rate), rule=rule,
                           placement='lattice')
