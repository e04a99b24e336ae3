"""One compressed unit: merge before its first block, reconstruct after
its last (:class:`TokenCompressor`).

Two reconstructions (docs/residual.md):

* ``'residual'`` (default): ``x' = x + R~ (B(M~ x) - M~ x)`` -- every token
  keeps its own value and receives its window's update; M~ is M with rows
  normalised to sum 1, R~ starts at 1. Pruned tokens get no update.
* ``'pinv'`` (the authors'): ``x' = R B(M x) + x_pruned`` with R = pinv(M):
  every merged token becomes a scaled copy of its window's output.

Two assignments (docs/content_windows.md): ``'content'`` (default), per
image every merged token joins the most similar centre among the windows
of its k x k neighbourhood (:mod:`.content`); ``'static'``, every token in
its structure's window.

Three formulations of the same arithmetic, chosen once per forward by
:meth:`TokenCompressor.merge` and carried to its reconstruct:
``'sparse'`` (one segment sum and one gather: eager and compiled runs),
``'export'`` (a sparse unit being exported to ONNX: gathers only, no index
written twice, see :mod:`.ops`) and ``'dense'`` (the authors' explicit
matrices, per image for content-aware windows: the reference, asked for
with ``impl='dense'``).

The sparse unit is built for the regime where every op is a kernel launch
(a GPU at small batch; docs/benchmark.md counts them): what depends only
on the structure (every token's row in the merged tensor, the
assignment's candidate tables) is computed once per batch size and kept
(:class:`UnitPlan`); so are, while no gradient is asked for, the weights
with the prefix tokens' in front (the cache follows the parameters'
version counters). What is left per forward is what the image decides:
residual with static windows, six kernels (a weighted segment sum:
multiply, zeros, index_add; the update, its gather and one fused
multiply-add); content-aware windows add the assignment
(:func:`~.content.assign_rows`, seven on the CPU) and the per-image
means (two: the weight as one more channel, a divide). No
host synchronisation: one graph under ``torch.compile``, capturable in a
CUDA graph.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmseg_pm.utils.errors import UsageError

from .content import (AssignmentPlan, CandidateTables, MemberTables,
                      assign_rows, assignment_plan, candidate_tables,
                      candidate_windows, possible_members,
                      tabled_assignment_sums)
from .ops import (assignment_matrices, merge_matrix, reconstruct_matrix,
                  tabled_segment_sum, window_tables, with_prefix)
from .structure import (ASSIGN_RULES, PLACEMENTS, CompressionStructure,
                        StructureRecipe, mean_merge_weights,
                        reconstruct_weights)

IMPLS = ('sparse', 'dense')
RECONSTRUCTS = ('residual', 'pinv')
ASSIGNS = ('content', 'static')
# the defaults of every layer (PMConfig, PruneAndMerge, TokenCompressor)
DEFAULT_ASSIGN = 'content'
DEFAULT_RECONSTRUCT = 'residual'
DEFAULT_IMPL = 'sparse'
DEFAULT_NEIGHBOURHOOD = 3


class UnitContext(NamedTuple):
    """What a reconstruct needs from its merge: the formulation chosen, the
    unit's input, its merged form (residual; None: pinv), the (B * T,) row
    of every token in the flattened (B * (P + K), C) merged tensor (sparse
    and export) and, content-aware windows, the (B, T) slot of every token
    (dense and export) and, pinv, each window's sum of squared weights
    (B * (P + K),)."""
    formulation: str
    inputs: Tensor
    merged: Optional[Tensor]
    rows: Optional[Tensor] = None
    slots: Optional[Tensor] = None
    squares: Optional[Tensor] = None


class UnitPlan(NamedTuple):
    """What a sparse unit's forward needs of its structure for B images of
    T = P + N tokens merged into S = P + K slots: every token's row in the
    flattened (B * S, C) merged tensor under the static windows (pruned
    tokens: window 0's, with weight 0), the (B, 1) first row of each
    image, and, content-aware windows, the assignment's plan."""
    rows: Tensor  # (B * T,)
    offsets: Tensor  # (B, 1): b * S
    assignment: Optional[AssignmentPlan]


def check_unit_settings(impl: str, reconstruct: str, assign: str,
                        neighbourhood: int) -> None:
    """The one check of a unit's settings (its config parses them, a unit
    built directly gets the same answer): each a known choice, the
    neighbourhood an odd int >= 1."""
    if impl not in IMPLS:
        raise UsageError(f'impl must be one of {IMPLS}, got {impl!r}')
    if assign not in ASSIGNS:
        raise UsageError(
            f'assign must be one of {ASSIGNS}, got {assign!r} '
            "('content': per image, each token joins the most similar "
            "centre near it; 'static': the structure's windows, for "
            'checkpoints made before content-aware windows)')
    if (isinstance(neighbourhood, bool) or not isinstance(neighbourhood, int)
            or neighbourhood < 1 or neighbourhood % 2 == 0):
        raise UsageError(
            'neighbourhood must be an odd int >= 1 (the k x k tokens '
            f'whose windows a token may join), got {neighbourhood!r}')
    if reconstruct not in RECONSTRUCTS:
        raise UsageError(
            f'reconstruct must be one of {RECONSTRUCTS}, got '
            f"{reconstruct!r} ('residual': every token keeps its "
            "value and gets its window's update, the project default; "
            "'pinv': the authors' pseudo-inverse, for their checkpoints)")


def _normal_tensors():
    """Cached tensors made under ``torch.inference_mode`` could not be
    used by autograd later: make them as normal tensors."""
    return torch.inference_mode(False)


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
    # written before structures kept their recipe: taken as a lattice
    n = int(saved[0]) * int(saved[1])
    state_dict.setdefault(prefix + 'recipe_scores', torch.ones(n))
    state_dict.setdefault(prefix + 'recipe_seed', torch.tensor(0))
    state_dict.setdefault(prefix + 'recipe_placement',
                          torch.tensor(PLACEMENTS.index('lattice')))
    state_dict.setdefault(prefix + 'recipe_rule', torch.tensor(0))
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


class TokenCompressor(nn.Module):
    """One compressed unit: merge before its first block, reconstruct after
    its last.

    Buffers ``group`` (N,) and ``is_centre`` (N,) hold the structure, so it
    is saved in and restored from checkpoints; their shapes depend only on
    the grid, so a model built from a config loads any structure for that
    grid. ``merge_weight`` and ``reconstruct_weight`` (N,) are the
    non-zeros of M and R: trainable on their fixed support unless
    ``trainable=False``. The buffers ``residual`` and ``content`` record the
    reconstruction and assignment the weights belong to, so a checkpoint is
    never read with the other formula.

    ``assign='content'``: its weights start at 1 (plain means; pinv: R's
    closed form per image). ``num_prefix`` leading tokens (the class token)
    are windows of their own (weight 1). The sparse path keeps them inside
    its one segment sum and one gather and sends pruned tokens to window 0
    with weight 0; its rows are planned once per batch size.
    """

    def __init__(self,
                 structure: CompressionStructure,
                 impl: str = DEFAULT_IMPL,
                 trainable: bool = True,
                 reconstruct: str = DEFAULT_RECONSTRUCT,
                 assign: str = DEFAULT_ASSIGN,
                 neighbourhood: int = DEFAULT_NEIGHBOURHOOD):
        super().__init__()
        check_unit_settings(impl, reconstruct, assign, neighbourhood)
        self.impl = impl
        self.assign = assign
        self.neighbourhood = neighbourhood
        # A plain attribute (reading the buffer would break torch.compile
        # graphs); loading refuses checkpoints of the other mode.
        self.reconstruct_mode = reconstruct
        n = structure.num_tokens
        self._grid = structure.grid
        self.register_buffer('grid', torch.tensor(structure.grid))
        self.register_buffer('group', torch.zeros(n, dtype=torch.long))
        self.register_buffer('is_centre', torch.zeros(n, dtype=torch.bool))
        self.register_buffer('residual',
                             torch.tensor(reconstruct == 'residual'))
        self.register_buffer('content', torch.tensor(assign == 'content'))
        # how the structure was made (StructureRecipe): another grid's
        # structure is made by the same rule
        self.register_buffer('recipe_scores', torch.ones(n))
        self.register_buffer('recipe_seed', torch.tensor(0))
        self.register_buffer('recipe_placement', torch.tensor(0))
        self.register_buffer('recipe_rule', torch.tensor(0))
        self.merge_weight = nn.Parameter(torch.zeros(n),
                                         requires_grad=trainable)
        self.reconstruct_weight = nn.Parameter(torch.zeros(n),
                                               requires_grad=trainable)
        # Derived from the buffers; recomputed after every structure change.
        self.register_buffer('_index', torch.zeros(n, dtype=torch.long),
                             persistent=False)
        self.register_buffer('_kept', torch.zeros(n), persistent=False)
        self._windows: Optional[Tuple[List[Tensor], Tensor]] = None
        self._candidates: Optional[CandidateTables] = None
        self._members: Optional[MemberTables] = None
        self.num_groups = 0
        self.has_pruned = False
        self._plans: Dict[tuple, UnitPlan] = {}
        self._weights: Dict[tuple, Tuple[Tensor, Tensor]] = {}
        self.set_structure(structure)

    @property
    def grid_size(self) -> Tuple[int, int]:
        """(H, W) of the structure, read from the buffer when the structure
        changes (reading it in a forward would wait for the device)."""
        return self._grid

    @property
    def num_similarity_pairs(self) -> int:
        """(token, candidate window) similarities per image and forward."""
        if self.assign != 'content':
            return 0
        return self._candidates.num_pairs

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
        recipe = structure.recipe or StructureRecipe.lattice(
            structure.num_tokens)
        with torch.no_grad():
            self.recipe_scores.copy_(recipe.scores)
            self.recipe_seed.fill_(recipe.seed)
            self.recipe_placement.fill_(PLACEMENTS.index(recipe.placement))
            self.recipe_rule.fill_(ASSIGN_RULES.index(recipe.rule))
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
        centre = torch.nonzero(self.is_centre.cpu()).flatten()
        recipe = StructureRecipe(PLACEMENTS[int(self.recipe_placement)],
                                 int(self.recipe_seed), self.recipe_scores,
                                 ASSIGN_RULES[int(self.recipe_rule)])
        return CompressionStructure(self.grid_size, group, centre, weight,
                                    recipe)

    def _refresh(self) -> None:
        """The derived buffers and tables of the current structure."""
        self._grid = (int(self.grid[0]), int(self.grid[1]))
        self.num_groups = int(self.is_centre.sum())
        kept = self.group >= 0
        self.has_pruned = not bool(kept.all())
        with torch.no_grad():
            # Pruned tokens go to window 0 with weight 0 in the segment sum.
            self._index.copy_(self.group.clamp(min=0))
            self._kept.copy_(kept.float())
            self._windows = window_tables(self.group)
            centre = torch.nonzero(self.is_centre).flatten()
            self._candidates = candidate_tables(
                self.group, self.is_centre, centre, candidate_windows(
                    self.group, self.is_centre, self.grid_size,
                    self.neighbourhood))
            self._members = possible_members(self._candidates)
            # tokens per window of the static structure (pruned: in none)
            self._window_sizes = self._kept.new_zeros(
                self.num_groups).index_add_(0, self.group[kept],
                                            self._kept[kept])
        self._plans.clear()
        self._weights.clear()
        # Fail now rather than on the first forward.
        self.structure()

    def _apply(self, fn, *args, **kwargs):
        """The tables follow ``.to(device)`` like the buffers."""
        super()._apply(fn, *args, **kwargs)
        with torch.no_grad():
            self._refresh()
        return self

    # ------------------------------------------------------------------
    def _formulation(self) -> str:
        """``'dense'`` (impl='dense'), ``'export'`` (a sparse unit being
        exported to ONNX) or ``'sparse'``: see the module docstring."""
        if self.impl == 'dense':
            return 'dense'
        return 'export' if torch.compiler.is_exporting() else 'sparse'

    def _plan(self, batch: int, num_prefix: int, device) -> UnitPlan:
        """The :class:`UnitPlan` for ``batch`` images, made once as normal
        tensors; while compiling, read from the cache but never stored
        (a graph's tensors are its own), and made afresh for a symbolic
        batch size (an export with a free batch dimension: a cache lookup
        would fix it)."""
        key = (batch, num_prefix, device)
        plan = self._plans.get(key) if isinstance(batch, int) else None
        if plan is not None:
            return plan
        with _normal_tensors():
            slots = num_prefix + self.num_groups
            offsets = torch.arange(batch, device=device)[:, None] * slots
            rows = (offsets + with_prefix(self._index, num_prefix)).flatten()
            plan = UnitPlan(rows, offsets, assignment_plan(
                self._candidates, rows, offsets, num_prefix)
                if self.assign == 'content' else None)
        if isinstance(batch, int) and not torch.compiler.is_compiling():
            if len(self._plans) >= 16:  # a few batch sizes are ever in use
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def _unit_weights(self, num_prefix: int, dtype: torch.dtype
                      ) -> Tuple[Tensor, Tensor]:
        """(T, 1) merge and reconstruct weights over prefix + patch tokens
        (1 for the prefix, 0 for pruned tokens): the current weights.
        Kept while no gradient is asked for and the parameters are
        unchanged (their version counters), so inference does not rebuild
        them every forward."""
        weights = (self.merge_weight, self.reconstruct_weight)
        fresh = torch.compiler.is_compiling() or (
            torch.is_grad_enabled() and weights[0].requires_grad)
        key = None if fresh else (num_prefix, dtype) + tuple(
            (w._version, w.data_ptr()) for w in weights)
        cached = self._weights.get(key)
        if cached is not None:
            return cached
        with _normal_tensors() if key is not None else nullcontext():
            value = tuple(F.pad(w * self._kept, (num_prefix, 0), value=1.0)
                          .to(dtype)[:, None] for w in weights)
        if key is not None:
            self._weights.clear()
            self._weights[key] = value
        return value

    # ------------------------------------------------------------------
    def merge(self, x: Tensor, num_prefix: int = 0
              ) -> Tuple[Tensor, UnitContext]:
        """(B, P + N, C) tokens -> (merged (B, P + K, C), context).

        The ``num_prefix`` = P leading tokens are windows of their own.
        ``context`` is what :meth:`reconstruct` needs besides the blocks'
        output.
        """
        formulation = self._formulation()
        b, t, c = x.shape
        plan = self._plan(b, num_prefix, x.device)
        content = plan.assignment is not None
        rows = assign_rows(x, plan.assignment) if content else plan.rows
        slots = (rows.view(b, t) - plan.offsets) \
            if content and formulation != 'sparse' else None
        if formulation == 'dense':
            return self._merge_dense(x, num_prefix, rows, slots)
        slot_count = num_prefix + self.num_groups
        weight, _ = self._unit_weights(num_prefix, x.dtype)
        residual = self.reconstruct_mode == 'residual'
        squares = None
        if formulation == 'export':
            if content:
                merged, totals, squares = tabled_assignment_sums(
                    x, slots[:, num_prefix:] - num_prefix, weight[num_prefix:,
                                                                  0],
                    self._members, num_prefix)
                if residual:
                    merged = merged / totals[..., None]
                    squares = None
                else:
                    squares = squares.flatten()
            else:
                merged = tabled_segment_sum(
                    x, self.merge_weight, *self._windows, num_prefix)
        elif content:
            merged, squares = self._window_means(x, rows, weight, slot_count,
                                                 residual)
        else:
            merged = x.new_zeros(b * slot_count, c).index_add_(
                0, rows, (x * weight).view(b * t, c)).view(b, slot_count, c)
        return merged, UnitContext(formulation, x,
                                   merged if residual else None, rows, slots,
                                   squares)

    @staticmethod
    def _window_means(x: Tensor, rows: Tensor, weight: Tensor,
                      slot_count: int, residual: bool
                      ) -> Tuple[Tensor, Optional[Tensor]]:
        """Content-aware windows, sparse: the weighted means (residual) or
        sums (pinv, with each window's squared-weight sum) of every image's
        windows, by one segment sum over the tokens with their weight (or
        its square) as one more channel. The sums are float32 in a
        half-precision model (bfloat16 sums of many tokens lose their last
        members), the merged tokens of ``x``'s dtype."""
        b, t, c = x.shape
        acc = x if x.dtype in (torch.float32, torch.float64) else x.float()
        weight = weight.to(acc.dtype)
        if residual:  # the weight itself as the last channel
            weighted = F.pad(acc, (0, 1), value=1.0) * weight
        else:  # its square
            weighted = torch.cat((acc * weight,
                                  (weight * weight).expand(b, t, 1)), -1)
        sums = acc.new_zeros(b * slot_count, c + 1).index_add_(
            0, rows, weighted.view(b * t, c + 1))
        sums, totals = sums.split([c, 1], 1)
        if residual:  # every window holds its centre: no total is zero
            return (sums / totals).view(b, slot_count, c).to(x.dtype), None
        return (sums.view(b, slot_count, c).to(x.dtype),
                totals.view(-1).to(x.dtype))

    def reconstruct(self, y: Tensor, context: UnitContext,
                    num_prefix: int = 0) -> Tensor:
        """(B, P + K, C) blocks' output -> (B, P + N, C) full grid.

        Residual: ``x + R~ (y - M~ x)``; pinv: ``R y`` with the pruned tokens
        put back. ``context`` comes from :meth:`merge`.
        """
        x = context.inputs
        if context.formulation == 'dense':
            return self._reconstruct_dense(y, context, num_prefix)
        b, t, c = x.shape
        _, spread = self._unit_weights(num_prefix, y.dtype)
        residual = self.reconstruct_mode == 'residual'
        update = y - context.merged if residual else y
        gathered = update.view(-1, c).index_select(0, context.rows)
        gathered = gathered.view(b, t, c)
        if context.squares is not None:  # pinv, content: R per image
            tiny = torch.finfo(context.squares.dtype).tiny
            spread = spread[None] / context.squares.clamp_min(tiny) \
                .index_select(0, context.rows).view(b, t, 1)
        if residual:
            return torch.addcmul(x, gathered, spread)
        if not self.has_pruned:
            return gathered * spread
        pruned = F.pad(1 - self._kept, (num_prefix, 0)).to(x.dtype)
        return torch.addcmul(x * pruned[:, None], gathered, spread)

    def attention_bias(self, context: UnitContext, num_prefix: int,
                       dtype: torch.dtype) -> Tensor:
        """(B or 1, 1, 1, P + K) log of the tokens each merged token
        stands for, added to the attention logits (proportional attention:
        a window of s identical tokens then weighs as its s tokens would;
        ToMe's size bias). Content-aware windows: this image's sizes."""
        slot_count = num_prefix + self.num_groups
        if self.assign == 'static':
            sizes = F.pad(self._window_sizes, (num_prefix, 0), value=1.0)
            sizes = sizes[None]
        else:
            b, t, _ = context.inputs.shape
            kept = F.pad(self._kept, (num_prefix, 0), value=1.0)
            sizes = kept.new_zeros(b * slot_count).index_add_(
                0, context.rows, kept.expand(b, t).flatten())
            sizes = sizes.view(b, slot_count)
        return sizes.clamp_min(1).log().to(dtype)[:, None, None, :]

    # ------------------------------------------------------------------
    # the dense formulation: the authors' explicit matrices (the reference)
    def _merge_dense(self, x: Tensor, num_prefix: int, rows: Tensor,
                     slots: Optional[Tensor]) -> Tuple[Tensor, UnitContext]:
        """``M x`` with M a (K, N) matrix (static) or per image (B, P + K,
        P + N) (content-aware; rows normalised, residual)."""
        residual = self.reconstruct_mode == 'residual'
        weight = self.merge_weight * self._kept
        squares = None
        if slots is None:
            m = merge_matrix(self.group, weight, self.num_groups)
            merged = torch.matmul(m.to(x.dtype), x[:, num_prefix:])
            merged = torch.cat((x[:, :num_prefix], merged), dim=1)
        else:
            m = assignment_matrices(
                slots, F.pad(weight, (num_prefix, 0), value=1.0),
                num_prefix + self.num_groups)
            if residual:
                m = m / m.sum(-1, keepdim=True)
            else:
                squares = (m * m).sum(-1)
            merged = torch.matmul(m, x)
        return merged, UnitContext('dense', x, merged if residual else None,
                                   rows, slots, squares)

    def _reconstruct_dense(self, y: Tensor, context: UnitContext,
                           num_prefix: int) -> Tensor:
        """``R y`` with explicit matrices: residual ``x + R~ (y - M~ x)``,
        pinv ``R y`` plus the pruned tokens."""
        x = context.inputs
        residual = self.reconstruct_mode == 'residual'
        update = y - context.merged if residual else y
        weight = self.reconstruct_weight * self._kept
        if context.slots is None:
            r = reconstruct_matrix(self.group, weight, self.num_groups)
            out = torch.matmul(r.to(y.dtype), update[:, num_prefix:])
            out = torch.cat((update[:, :num_prefix], out), dim=1)
        else:
            scale = F.pad(weight, (num_prefix, 0), value=1.0).to(y.dtype)
            scale = scale.expand(y.shape[0], -1)
            if context.squares is not None:
                tiny = torch.finfo(y.dtype).tiny
                scale = scale / context.squares.clamp(min=tiny).gather(
                    1, context.slots)
            one_hot = assignment_matrices(context.slots, y.new_ones(()),
                                          update.shape[1])
            out = torch.matmul(one_hot.transpose(1, 2) * scale[..., None],
                               update)
        if residual:
            return x + out
        pruned = (1 - self._kept).to(x.dtype)[:, None]
        return torch.cat((out[:, :num_prefix],
                          out[:, num_prefix:] + x[:, num_prefix:] * pruned),
                         dim=1)

    def source(self, batch: int, num_prefix: int = 0,
               context: Optional[UnitContext] = None) -> Tensor:
        """(B, P + N) merged token of every original token (-1: pruned);
        content-aware: of this image (``context`` from :meth:`merge`)."""
        kept = F.pad(self._kept, (num_prefix, 0), value=1.0) > 0
        if context is not None and self.assign == 'content':
            slots = context.slots
            if slots is None:
                plan = self._plan(batch, num_prefix, context.rows.device)
                slots = context.rows.view(batch, -1) - plan.offsets
            return torch.where(kept, slots, -1)
        slots = with_prefix(self._index, num_prefix)
        return torch.where(kept, slots, -1).expand(batch, -1)

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
