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
``'sparse'`` (segment sums and gathers: eager and compiled runs),
``'export'`` (a sparse unit being exported to ONNX: gathers only, no index
written twice, see :mod:`.ops`) and ``'dense'`` (the authors' explicit
matrices, per image for content-aware windows: the reference, asked for
with ``impl='dense'``).
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from .content import (CandidateTables, MemberTables, candidate_tables,
                      candidate_windows, content_assignment, pair_pattern,
                      possible_members, tabled_assignment_sums)
from .ops import (assignment_matrices, batched_rows, gather_scale,
                  merge_matrix, merge_tokens, per_image_rows,
                  reconstruct_matrix, segment_sum, slot_totals,
                  tabled_segment_sum, weight_with_prefix, window_tables,
                  with_prefix)
from .structure import (CompressionStructure, mean_merge_weights,
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
    unit's input and its merged form (residual) or the pruned tokens
    (pinv); content-aware windows: the (B, P + N) merged token of every
    token in each image and, pinv, each window's sum of squared weights."""
    formulation: str
    inputs: Optional[Tensor]
    merged: Optional[Tensor]
    pruned: Optional[Tensor]
    slots: Optional[Tensor] = None
    squares: Optional[Tensor] = None


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
    with weight 0; its row indices are cached per input shape.
    """

    def __init__(self,
                 structure: CompressionStructure,
                 impl: str = DEFAULT_IMPL,
                 trainable: bool = True,
                 reconstruct: str = DEFAULT_RECONSTRUCT,
                 assign: str = DEFAULT_ASSIGN,
                 neighbourhood: int = DEFAULT_NEIGHBOURHOOD):
        super().__init__()
        for name, value, known in (('merge impl', impl, IMPLS),
                                   ('reconstruct', reconstruct, RECONSTRUCTS),
                                   ('assign', assign, ASSIGNS)):
            if value not in known:
                raise ValueError(f'unknown {name} {value!r}; use one of '
                                 f'{known}')
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
        self._windows: Optional[Tuple[List[Tensor], Tensor]] = None
        self._candidates: Optional[CandidateTables] = None
        self._members: Optional[MemberTables] = None
        self.num_groups = 0
        self.has_pruned = False
        self._rows: Dict[tuple, tuple] = {}
        self.set_structure(structure)

    @property
    def grid_size(self) -> Tuple[int, int]:
        return int(self.grid[0]), int(self.grid[1])

    @property
    def num_similarity_pairs(self) -> int:
        """(token, candidate window) similarities per image and forward."""
        if self.assign != 'content':
            return 0
        return self._candidates.num_pairs + self.num_groups  # + norms

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
        centre = torch.nonzero(self.is_centre.cpu()).flatten()
        return CompressionStructure(self.grid_size, group, centre, weight)

    def _refresh(self) -> None:
        """The derived buffers and tables of the current structure."""
        self.num_groups = int(self.is_centre.sum())
        kept = self.group >= 0
        self.has_pruned = not bool(kept.all())
        with torch.no_grad():
            # Pruned tokens go to window 0 with weight 0 in the segment sum.
            self._index.copy_(self.group.clamp(min=0))
            self._kept.copy_(kept.float())
            self._pruned = torch.nonzero(~kept).flatten()
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
        self._rows.clear()
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

    def _cached(self, key: tuple, make):
        """Index tensors per input shape, made as normal tensors; not
        cached while compiling (they become graph constants)."""
        compiling = torch.compiler.is_compiling()
        cached = None if compiling else self._rows.get(key)
        if cached is not None:
            return cached
        with _normal_tensors():
            value = make()
        if not compiling:
            if len(self._rows) >= 16:  # a few batch sizes are ever in use
                self._rows.clear()
            self._rows[key] = value
        return value

    def _batched_indices(self, batch: int, num_prefix: int
                         ) -> Tuple[Tensor, Tensor]:
        """Rows in the flattened (B * tokens, C) tensors: the merged row of
        every token (merge scatters into it, reconstruct gathers from it),
        and the rows of the pruned tokens."""
        def make():
            index = with_prefix(self._index, num_prefix)
            return (batched_rows(index, batch, num_prefix + self.num_groups),
                    batched_rows(self._pruned + num_prefix, batch,
                                 index.numel()))
        return self._cached(('static', batch, num_prefix,
                             self._index.device), make)

    def _pair_pattern(self, x: Tensor, num_prefix: int):
        """The CSR pattern of the similarity pairs, or None where the
        assignment loops over candidate slots (not eager on the CPU)."""
        if x.device.type != 'cpu' or torch.compiler.is_compiling() or \
                torch.compiler.is_exporting():
            return None
        batch = x.shape[0]
        return self._cached(('pairs', batch, num_prefix, x.device), lambda: (
            pair_pattern(self._candidates, num_prefix, self.group.numel(),
                         batch)))

    def _unit_weights(self, num_prefix: int, dtype: torch.dtype
                      ) -> Tuple[Tensor, Tensor]:
        """Merge and reconstruct weights over prefix + patch tokens (zero
        for pruned tokens): always the current weights."""
        return tuple(weight_with_prefix(w * self._kept, num_prefix).to(dtype)
                     for w in (self.merge_weight, self.reconstruct_weight))

    # ------------------------------------------------------------------
    def merge(self, x: Tensor, num_prefix: int = 0
              ) -> Tuple[Tensor, UnitContext]:
        """(B, P + N, C) tokens -> (merged (B, P + K, C), context).

        The ``num_prefix`` = P leading tokens are windows of their own.
        ``context`` is what :meth:`reconstruct` needs besides the blocks'
        output.
        """
        formulation = self._formulation()
        if self.assign == 'content':
            return self._merge_content(x, num_prefix, formulation)
        if formulation == 'dense':
            m = merge_matrix(self.group, self.merge_weight * self._kept,
                             self.num_groups)
            merged = torch.matmul(m.to(x.dtype), x[:, num_prefix:])
            merged = torch.cat((x[:, :num_prefix], merged), dim=1)
        elif formulation == 'export':
            # pruned tokens are in no table: no mask needed on the weights
            merged = tabled_segment_sum(x, self.merge_weight,
                                        *self._windows, num_prefix)
        else:
            scatter, _ = self._batched_indices(x.shape[0], num_prefix)
            weight, _ = self._unit_weights(num_prefix, x.dtype)
            merged = segment_sum(x, None, weight,
                                 num_prefix + self.num_groups, rows=scatter)
        if self.reconstruct_mode == 'residual':
            return merged, UnitContext(formulation, x, merged, None)
        return merged, UnitContext(
            formulation, None, None,
            self._pruned_tokens(x, num_prefix, formulation))

    def reconstruct(self, y: Tensor, context: UnitContext,
                    num_prefix: int = 0) -> Tensor:
        """(B, P + K, C) blocks' output -> (B, P + N, C) full grid.

        Residual: ``x + R~ (y - M~ x)``; pinv: ``R y`` with the pruned tokens
        put back. ``context`` comes from :meth:`merge`.
        """
        residual = self.reconstruct_mode == 'residual'
        spread = self._spread_content if context.slots is not None \
            else self._spread
        out = spread(y - context.merged if residual else y, context,
                     num_prefix)
        if not residual:
            return self._put_back_pruned(out, context, num_prefix)
        if torch.is_grad_enabled() and (out.requires_grad
                                        or context.inputs.requires_grad):
            return context.inputs + out
        return out.add_(context.inputs)  # out is fresh: safe in place

    def attention_bias(self, context: UnitContext, num_prefix: int,
                       dtype: torch.dtype) -> Tensor:
        """(B or 1, 1, 1, P + K) log of the tokens each merged token
        stands for, added to the attention logits (proportional attention:
        a window of s identical tokens then weighs as its s tokens would;
        ToMe's size bias). Content-aware windows: this image's sizes."""
        slot_count = num_prefix + self.num_groups
        if context.slots is None:
            sizes = weight_with_prefix(self._window_sizes, num_prefix)[None]
        else:
            kept = weight_with_prefix(self._kept, num_prefix)
            sizes = slot_totals(kept.expand_as(context.slots),
                                per_image_rows(context.slots, slot_count),
                                slot_count)
        return sizes.clamp_min(1).log().to(dtype)[:, None, None, :]

    def _put_back_pruned(self, x: Tensor, context: UnitContext,
                         num_prefix: int) -> Tensor:
        """pinv: the pruned tokens back into ``x`` (which is fresh)."""
        if context.pruned is None:
            return x
        if context.formulation == 'dense':
            x[:, num_prefix:] += context.pruned
        else:
            _, pruned = self._batched_indices(x.shape[0], num_prefix)
            x.view(-1, x.shape[-1]).index_copy_(0, pruned, context.pruned)
        return x

    def _spread(self, y: Tensor, context: UnitContext,
                num_prefix: int) -> Tensor:
        """``R y`` of a static structure: every token gets its window's row
        of ``y`` times its reconstruct weight (0 for pruned tokens); prefix
        tokens keep theirs."""
        if context.formulation == 'dense':
            r = reconstruct_matrix(self.group,
                                   self.reconstruct_weight * self._kept,
                                   self.num_groups)
            x = torch.matmul(r.to(y.dtype), y[:, num_prefix:])
            return torch.cat((y[:, :num_prefix], x), dim=1)
        gather, _ = self._batched_indices(y.shape[0], num_prefix)
        _, weight = self._unit_weights(num_prefix, y.dtype)
        return gather_scale(y, None, weight, rows=gather)

    def _pruned_tokens(self, x: Tensor, num_prefix: int,
                       formulation: str) -> Optional[Tensor]:
        """The pinv shortcut: the pruned tokens (sparse: their rows; dense:
        the patch tokens masked to them), None when nothing is pruned."""
        if not self.has_pruned:
            return None
        if formulation == 'dense':
            return x[:, num_prefix:] * (1 - self._kept).to(x.dtype)[:, None]
        b, t, c = x.shape
        _, pruned = self._batched_indices(b, num_prefix)
        return x.reshape(b * t, c).index_select(0, pruned)

    # ------------------------------------------------------------------
    # content-aware windows
    def _merge_content(self, x: Tensor, num_prefix: int, formulation: str
                       ) -> Tuple[Tensor, UnitContext]:
        """Per image: the window of every merged token
        (:func:`content_assignment`), then weighted means (residual) or
        sums (pinv) of the tokens each window got."""
        windows = content_assignment(x, self._candidates, num_prefix,
                                     self._pair_pattern(x, num_prefix))
        head = torch.arange(num_prefix, device=x.device)
        slots = torch.cat((head.expand(x.shape[0], -1),
                           windows + num_prefix), 1)
        weight, _ = self._unit_weights(num_prefix, x.dtype)
        slot_count = num_prefix + self.num_groups
        residual = self.reconstruct_mode == 'residual'
        squares = None
        if formulation == 'dense':
            m = assignment_matrices(slots, weight, slot_count)
            squares = (m * m).sum(-1)
            if residual:
                m = m / m.sum(-1, keepdim=True)
            merged = torch.matmul(m, x)
        elif formulation == 'export':
            sums, totals, squares = tabled_assignment_sums(
                x, windows, weight[num_prefix:], self._members, num_prefix)
            merged = sums / totals.clamp_min(
                torch.finfo(totals.dtype).tiny)[..., None] if residual \
                else sums
        else:
            merged, totals = merge_tokens(x, slots, weight, slot_count)
            if not residual:
                merged = merged * totals[..., None]
                squares = slot_totals((weight * weight).expand_as(slots),
                                      per_image_rows(slots, slot_count),
                                      slot_count)
        if residual:
            return merged, UnitContext(formulation, x, merged, None, slots)
        return merged, UnitContext(
            formulation, None, None,
            self._pruned_tokens(x, num_prefix, formulation), slots, squares)

    def _spread_content(self, y: Tensor, context: UnitContext,
                        num_prefix: int) -> Tensor:
        """``R y`` with the image's assignment: ``r_p y_{g(p)}`` (residual)
        or ``r_p / sum_{i in g(p)} w_i^2 y_{g(p)}`` (pinv, the closed-form
        pseudo-inverse per image). A gather, except ``'dense'``."""
        b, slot_count, _ = y.shape
        _, spread_weight = self._unit_weights(num_prefix, y.dtype)
        scale = spread_weight.expand(b, -1)
        if context.squares is not None:
            tiny = torch.finfo(y.dtype).tiny
            scale = scale / context.squares.clamp(min=tiny).gather(
                1, context.slots)
        if context.formulation == 'dense':
            one_hot = assignment_matrices(context.slots, y.new_ones(()),
                                          slot_count)
            return torch.matmul(one_hot.transpose(1, 2) * scale[..., None], y)
        return gather_scale(y, None, scale,
                            rows=per_image_rows(context.slots, slot_count))

    def source(self, batch: int, num_prefix: int = 0,
               context: Optional[UnitContext] = None) -> Tensor:
        """(B, P + N) merged token of every original token (-1: pruned);
        content-aware: of this image (``context`` from :meth:`merge`)."""
        if context is not None and context.slots is not None:
            kept = weight_with_prefix(self._kept, num_prefix) > 0
            return torch.where(kept, context.slots, -1)
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
