"""Content-aware windows: per image, every merged token joins the most
similar centre among the windows of its k x k neighbourhood.

The centres, their number K and every shape stay those of the unit's
static structure; only which window a merged token (kept, not a centre)
joins follows the image. Centres stay in their own window and pruned
tokens are in none, so only the M merged tokens are assigned.

Everything that depends only on the structure (each merged token's D
distinct candidate windows, their rows in the merged tensor, which tokens
to read) is an :class:`AssignmentPlan`, built once per unit, batch size
and prefix length. What depends on the image is :func:`assign_rows`: the
similarity of every (merged token, candidate window) pair (four kernels
with the centres' normalisation), an argmax, the winners' rows looked up
and written into the static rows -- seven kernels whatever the structure,
with no host synchronisation (one graph under ``torch.compile``,
capturable in a CUDA graph, exported as it is). The similarities are one
sampled sparse-dense product over the planned pairs on the CPU in eager
mode (nothing gathered: where the arithmetic sets the time), and
elsewhere a gather of the candidates' centres and one batched product
(ops the compilers and exporters know; two kernels more). The
candidate of largest cosine wins, ties to the earlier candidate of the
k x k scan, which starts with the token's own window (a row with fewer
than D distinct windows is padded with its own window, which an argmax
never prefers to the first column).
"""
from __future__ import annotations

import warnings
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from .ops import autocast_off, member_tables


def candidate_windows(group: Tensor, is_centre: Tensor,
                      grid: Tuple[int, int], neighbourhood: int) -> Tensor:
    """(N, k * k) windows each token may join: the windows of the kept
    tokens in its k x k neighbourhood in scan order, its own window first
    (ties go to it) and in place of neighbours that are pruned or off the
    grid. A centre's row is its own window only (a centre stays in its
    window); a pruned token's row is window 0 (its merge weight is 0)."""
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


def distinct_candidates(candidates: Tensor) -> Tuple[Tensor, Tensor]:
    """Each row's distinct windows in order of first appearance, padded
    with the row's first (own) window: (rows, D) and the (rows,) count of
    distinct windows; D is the largest count."""
    n, k = candidates.shape
    if n == 0:
        return candidates[:, :1], candidates.new_zeros(0)
    same = candidates[:, :, None] == candidates[:, None, :]
    earlier = torch.ones(k, k, dtype=torch.bool,
                         device=candidates.device).tril(-1)
    repeat = (same & earlier).any(-1)  # seen at an earlier slot
    order = torch.argsort(repeat.long(), dim=1, stable=True)
    count = (~repeat).sum(1)
    width = int(count.max())
    ordered = candidates.gather(1, order)[:, :width]
    slot = torch.arange(width, device=candidates.device)
    return torch.where(slot < count[:, None], ordered,
                       candidates[:, :1]), count


class CandidateTables(NamedTuple):
    """The candidates of one structure (:func:`candidate_tables`), over
    patch tokens."""
    free: Tensor  # (M,) the merged tokens
    choices: Tensor  # (M, D) their distinct candidate windows, own first
    counts: Tensor  # (M,) how many of them are distinct
    centre: Tensor  # (K,) the centre token of every window

    @property
    def num_pairs(self) -> int:
        """(merged token, candidate) similarities computed per image."""
        return self.choices.numel()


def candidate_tables(group: Tensor, is_centre: Tensor, centre: Tensor,
                     candidates: Tensor) -> CandidateTables:
    """:class:`CandidateTables` of a structure (``group`` window per token,
    -1 pruned; ``centre`` (K,) centre token per window) and its
    :func:`candidate_windows`."""
    free = torch.nonzero((group >= 0) & ~is_centre).flatten()
    choices, counts = distinct_candidates(candidates[free])
    return CandidateTables(free, choices, counts, centre)


class AssignmentPlan(NamedTuple):
    """The structure-only part of a unit's assignment for a batch of B
    images of T = P + N tokens (P prefix tokens), merged into S = P + K
    slots: indices into the flattened (B * T) tokens and (B * S, C)
    merged tensor, and, on the CPU, the pairs as a sparse pattern."""
    rows: Tensor  # (B * T,) every token's row under the static windows
    read: Tensor  # (M + K,) tokens of x read: the merged ones, the centres
    choices: Tensor  # (M * D,) candidate windows of every merged token
    choice_rows: Tensor  # (B * M, D) their rows
    free: Tensor  # (B * M,) position of every merged token in (B * T)
    pairs: Optional[Tensor]  # (B, T, T) CSR: merged token -> D centres


def assignment_plan(tables: CandidateTables, rows: Tensor, offsets: Tensor,
                    num_prefix: int) -> AssignmentPlan:
    """The :class:`AssignmentPlan` of ``tables`` given every token's static
    ``rows`` (B * T,) and each image's first row ``offsets`` (B, 1)."""
    b = offsets.shape[0]
    tokens = rows.numel() // b
    free = tables.free + num_prefix
    centres = tables.centre + num_prefix
    first_token = torch.arange(b, device=rows.device)[:, None] * tokens
    pairs = None
    if rows.device.type == 'cpu' and not _tracing():
        pairs = pair_pattern(tables, tokens, num_prefix, b)
    return AssignmentPlan(
        rows, torch.cat((free, centres)), tables.choices.flatten(),
        (offsets[:, :, None] + num_prefix + tables.choices[None]).flatten(
            0, 1),
        (first_token + free).flatten(), pairs)


def _tracing() -> bool:
    """Compiled or exported: graphs hold no sparse tensors."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


def pair_pattern(tables: CandidateTables, tokens: int, num_prefix: int,
                 batch: int) -> Tensor:
    """(B, T, T) sparse CSR pattern of the (merged token, candidate centre)
    pairs over the T tokens: each merged token's row holds the centre
    tokens of its D candidate windows in slot order (padding repeats its
    own window's), so the values of a sampled product over it come out as
    the (M, D) table of every image. Its values are never read (the
    product's beta is 0)."""
    m, d = tables.choices.shape
    columns = tables.centre[tables.choices.flatten()] + num_prefix
    count = torch.zeros(tokens, dtype=torch.long, device=tables.free.device)
    count[tables.free + num_prefix] = d
    crow = torch.cat((count.new_zeros(1), torch.cumsum(count, 0)))
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter('ignore')
        return torch.sparse_csr_tensor(
            crow.expand(batch, -1).contiguous(),
            columns.expand(batch, -1).contiguous(),
            torch.zeros(batch, m * d), size=(batch, tokens, tokens),
            check_invariants=False)


@register_flop_formula(torch.ops.aten.sparse_sampled_addmm, get_raw=True)
def _sampled_addmm_flops(pattern, mat1, mat2, *args, out_val=None,
                         **kwargs) -> int:
    """One multiply-add per channel and sampled entry (FlopCounterMode
    knows no formula for it: its entries are not in the shapes)."""
    return 2 * pattern.values().numel() * mat1.shape[-1]


def assign_rows(x: Tensor, plan: AssignmentPlan) -> Tensor:
    """(B * T,) row of every token of ``x`` (B, T, C) in the flattened
    merged tensor under this image's windows: each merged token the
    candidate whose centre is most similar by cosine, every other token
    its static row. Float32 with autocast off whatever the model's dtype;
    not differentiable (an argmax). The token's own norm is the same for
    all its candidates: only the centres are normalised.

    The (B * M, D) similarities: eager on the CPU, one sampled product of
    the tokens with the normalised tokens over the planned pairs (nothing
    gathered); elsewhere (compiled, exported, other devices) a gather of
    every merged token's candidate centres, normalised, and one batched
    product."""
    b, _, c = x.shape
    bm, d = plan.choice_rows.shape
    m = bm // b
    if m == 0:
        return plan.rows
    sampled = not _tracing() and plan.pairs is not None
    with autocast_off(x.device.type):
        x = x.detach().float() if x.requires_grad else x.float()
        if sampled:
            unit = x / torch.linalg.vector_norm(
                x, dim=-1, keepdim=True).clamp_min(1e-12)
            dots = torch.sparse.sampled_addmm(
                plan.pairs, x, unit.transpose(1, 2), beta=0.0).values()
        else:
            tokens, centres = x.index_select(1, plan.read).split(
                [m, plan.read.numel() - m], 1)
            centres = centres / torch.linalg.vector_norm(
                centres, dim=-1, keepdim=True).clamp_min(1e-12)
            candidates = centres.index_select(1, plan.choices)
            dots = torch.bmm(candidates.view(bm, d, c),
                             tokens.reshape(bm, c, 1))
    chosen = plan.choice_rows.gather(1, dots.view(bm, d).argmax(1, True))
    return plan.rows.scatter(0, plan.free, chosen.view(bm))


class MemberTables(NamedTuple):
    """Every token that may join each window (its centre and the merged
    tokens with it among their candidates) as :func:`member_tables`: the
    gather-only merge of :func:`tabled_assignment_sums`."""
    tables: List[Tensor]
    windows: List[Tensor]  # the window of every row, per table
    order: Tensor  # row of window k in the tables stacked


def possible_members(tables: CandidateTables) -> MemberTables:
    """The :class:`MemberTables` of a structure's candidate tables."""
    k = tables.centre.numel()
    width = tables.choices.shape[1]
    real = torch.arange(width, device=tables.centre.device) \
        < tables.counts[:, None]
    token = tables.free[:, None].expand(-1, width)[real]
    window = torch.cat((torch.arange(k, device=tables.centre.device),
                        tables.choices[real]))
    token = torch.cat((tables.centre, token))
    rows, windows, order = member_tables(window, token, k)
    return MemberTables(rows, list(windows.split([t.shape[0] for t in rows])),
                        order)


def tabled_assignment_sums(x: Tensor, assign: Tensor, weight: Tensor,
                           members: MemberTables, num_prefix: int
                           ) -> Tuple[Tensor, Tensor, Tensor]:
    """Per image, the weighted sums of the tokens of every window under
    ``assign`` (B, N) and each window's sum of weights and of squared
    weights: (B, P + K, C), (B, P + K), (B, P + K), the ``num_prefix`` = P
    leading tokens windows of their own (weight 1). Gathers and small
    products over the windows' possible members: no index written twice
    (what is exported)."""
    b, _, c = x.shape
    weight = weight.to(x.dtype)
    prefix = x.new_ones(b, num_prefix)
    sums, totals, squares = [x[:, :num_prefix]], [prefix], [prefix]
    for table, window in zip(members.tables, members.windows):
        index = table.clamp(min=0)
        joined = (assign[:, index] == window[:, None]) & (table >= 0)
        w = torch.where(joined, weight[index], 0)
        rows = x.index_select(1, index.flatten() + num_prefix)
        sums.append(torch.matmul(w[..., None, :],
                                 rows.view(b, *table.shape, c)).squeeze(-2))
        totals.append(w.sum(-1))
        squares.append((w * w).sum(-1))
    order = torch.cat((torch.arange(num_prefix, device=x.device),
                       members.order + num_prefix))
    return tuple(torch.cat(parts, 1).index_select(1, order)
                 for parts in (sums, totals, squares))
