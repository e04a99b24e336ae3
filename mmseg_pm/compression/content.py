"""Content-aware windows: per image, every merged token joins the most
similar centre among the windows of its k x k neighbourhood.

The centres, their number K and every shape stay those of the unit's
static structure; only which window a merged token (kept, not a centre)
joins follows the image. Centres stay in their own window and pruned
tokens are in none, so only the M merged tokens are assigned.

What it costs, and why it is computed this way (docs/content_windows.md):
the similarity needs only the pairs (merged token, one of its distinct
candidate windows), about 5-6 per token. Eager runs on the CPU compute
exactly those dot products with one sampled sparse-dense product
(:func:`pair_dots`, SDDMM: nothing materialised; 0.7-1.3 % of a ViT-S
block at batch 8, 1.3-2.6 % at batch 1), every other run (ONNX export,
``torch.compile``, other devices) with a loop over the candidate slots
(:func:`slot_similarity`: one gather, product and sum per slot, which
Inductor fuses). Both give the same assignment: the candidate of largest
cosine, ties to the earlier candidate of the k x k scan, which starts with
the token's own window.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from .ops import member_tables, with_prefix


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
    """What the assignment of one structure needs, derived once from its
    candidate table (:func:`candidate_tables`); all over patch tokens."""
    free: Tensor  # (M,) merged tokens, most distinct candidates first
    choices: Tensor  # (M, D) their distinct candidate windows, own first
    lengths: Tuple[int, ...]  # merged tokens with more than d candidates
    centre: Tensor  # (K,) the centre token of every window
    fixed: Tensor  # (N - M,) window of every other token (pruned: 0)
    inverse: Tensor  # (N,) position of each token in cat(others, free)
    pair_token: Tensor  # (nnz,) merged token of every (token, window) pair
    pair_window: Tensor  # (nnz,) its window; pairs by token, then window
    pair_slot: Tensor  # (nnz,) position m * D + d of the pair in choices

    @property
    def num_pairs(self) -> int:
        return self.pair_token.numel()


def candidate_tables(group: Tensor, is_centre: Tensor, centre: Tensor,
                     candidates: Tensor) -> CandidateTables:
    """:class:`CandidateTables` of a structure (``group`` window per token,
    -1 pruned; ``centre`` (K,) centre token per window) and its
    :func:`candidate_windows`."""
    n = group.numel()
    merged = (group >= 0) & ~is_centre
    free = torch.nonzero(merged).flatten()
    choices, count = distinct_candidates(candidates[free])
    order = torch.argsort(count, descending=True, stable=True)
    free, choices, count = free[order], choices[order], count[order]
    width = choices.shape[1]
    lengths = tuple(int((count > d).sum()) for d in range(width))
    others = torch.nonzero(~merged).flatten()
    inverse = torch.argsort(torch.cat((others, free)))
    # the pairs as a CSR pattern wants them: by token, then by window
    slot = torch.arange(width, device=group.device)
    real = slot < count[:, None]
    row = torch.arange(free.numel(), device=group.device)[:, None]
    window, position = choices[real], (row * width + slot)[real]
    row = row.expand(-1, width)[real]
    key = free[row] * (n + 1) + window
    by_token = torch.argsort(key)
    return CandidateTables(free, choices, lengths, centre,
                           group[others].clamp(min=0), inverse,
                           free[row][by_token], window[by_token],
                           position[by_token])


def pair_dots(x: Tensor, crow: Tensor, col: Tensor) -> Tensor:
    """(B, nnz) dot products ``x[b, row] . x[b, col]`` of the pairs of a
    batched CSR pattern (``crow`` (B, T + 1), ``col`` (B, nnz) sorted
    within rows) over the T tokens of ``x`` (B, T, C): a sampled
    dense-dense product, which gathers nothing and materialises nothing
    (the second operand a transposed view: made contiguous, it would cost
    five times the product)."""
    b, t, _ = x.shape
    with _quiet_once():
        pattern = torch.sparse_csr_tensor(crow, col, x.new_zeros(col.shape),
                                          size=(b, t, t),
                                          check_invariants=False)
        return torch.sparse.sampled_addmm(pattern, x, x.transpose(1, 2),
                                          beta=0.0).values()


_warned = []


def _quiet_once():
    """torch warns once per process that sparse CSR support is in beta:
    silence that first call, leave every later one as it is (catching
    warnings on every call would cost as much as a small op)."""
    if _warned:
        return contextlib.nullcontext()
    _warned.append(True)
    return _ignoring_warnings()


@contextlib.contextmanager
def _ignoring_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        yield


@register_flop_formula(torch.ops.aten.sparse_sampled_addmm, get_raw=True)
def _sampled_addmm_flops(pattern, mat1, mat2, *args, out_val=None,
                         **kwargs) -> int:
    """One multiply-add per channel and sampled entry (FlopCounterMode
    knows no formula for it: its entries are not in the shapes)."""
    return 2 * pattern.values().numel() * mat1.shape[-1]


def pair_pattern(tables: CandidateTables, num_prefix: int, num_tokens: int,
                 batch: int) -> Tuple[Tensor, Tensor, Tensor]:
    """The CSR pattern (crow, col) of :func:`pair_dots` over the
    ``num_prefix`` + ``num_tokens`` tokens of a unit's input, and where
    each product goes: row = merged token, column = the centre token of
    one of its candidate windows (to ``pair_slot``), and every centre with
    itself (its squared norm, to M * D + k); (crow, col) repeated for
    each of ``batch`` images."""
    k = tables.centre.numel()
    rows = torch.cat((tables.pair_token, tables.centre)) + num_prefix
    cols = torch.cat((tables.centre[tables.pair_window], tables.centre)
                     ) + num_prefix
    goes = torch.cat((tables.pair_slot, tables.choices.numel()
                      + torch.arange(k, device=rows.device)))
    order = torch.argsort(rows * (num_prefix + num_tokens) + cols)
    counts = torch.bincount(rows, minlength=num_prefix + num_tokens)
    crow = torch.cat((counts.new_zeros(1), torch.cumsum(counts, 0)))
    return (crow.expand(batch, -1).contiguous(),
            cols[order].expand(batch, -1).contiguous(), goes[order])


def slot_similarity(x: Tensor, tables: CandidateTables,
                    num_prefix: int) -> Tensor:
    """(B, M, D) dot products of every merged token with the centre of each
    of its candidate windows (-inf past its distinct ones), one slot at a
    time: a gather, a product and a sum per slot, nothing but gathers to
    export."""
    b, _, c = x.shape
    m = tables.free.numel()
    tokens = x.index_select(1, tables.free + num_prefix)
    columns = []
    for d, length in enumerate(tables.lengths):
        centres = tables.centre[tables.choices[:length, d]] + num_prefix
        dots = (tokens[:, :length] * x.index_select(1, centres)).sum(-1)
        if length < m:
            dots = torch.cat((dots, dots.new_full((b, m - length),
                                                  float('-inf'))), 1)
        columns.append(dots)
    return torch.stack(columns, -1)


def pair_similarity(x: Tensor, tables: CandidateTables,
                    pattern: Tuple[Tensor, Tensor, Tensor]
                    ) -> Tuple[Tensor, Tensor]:
    """:func:`slot_similarity` and the centres' squared norms (B, K) by one
    :func:`pair_dots` over :func:`pair_pattern` (eager runs)."""
    b = x.shape[0]
    m, width = tables.choices.shape
    crow, col, goes = pattern
    dots = pair_dots(x, crow, col)
    table = dots.new_full((b, m * width + tables.centre.numel()),
                          float('-inf')).index_copy_(1, goes, dots)
    return table[:, :m * width].view(b, m, width), table[:, m * width:]


def content_assignment(x: Tensor, tables: CandidateTables, num_prefix: int,
                       pattern: Optional[Tuple[Tensor, Tensor, Tensor]] = None
                       ) -> Tensor:
    """(B, N) window of every patch token of ``x`` (B, P + N, C): merged
    tokens the candidate whose centre is most similar by cosine (ties to
    the earlier candidate, the own window first), the others their own.
    Computed in float32 whatever the model's dtype or autocast; by
    :func:`pair_similarity` where ``pattern`` (:func:`pair_pattern`) is
    given, else by :func:`slot_similarity`. Not differentiable (an argmax).
    The cosine's norm of the token is the same for all its candidates, so
    only the centres' norms divide."""
    b = x.shape[0]
    if tables.free.numel() == 0:
        return tables.fixed.expand(b, -1).index_select(1, tables.inverse)
    # float32 whatever the model's dtype; none of these ops autocasts
    x = x.detach().float()
    if pattern is not None:
        dots, squares = pair_similarity(x, tables, pattern)
    else:
        dots = slot_similarity(x, tables, num_prefix)
        centres = x.index_select(1, tables.centre + num_prefix)
        squares = (centres * centres).sum(-1)
    norm = squares.clamp_min(1e-24).sqrt().index_select(
        1, tables.choices.flatten())
    choice = (dots / norm.view_as(dots)).argmax(-1, keepdim=True)
    window = tables.choices.expand(b, -1, -1).gather(2, choice).squeeze(-1)
    both = torch.cat((tables.fixed.expand(b, -1), window), 1)
    return both.index_select(1, tables.inverse)


def gather_every_candidate(x: Tensor, centre: Tensor,
                           candidates: Tensor) -> Tensor:
    """(B, N) the assignment as first built, of patch tokens ``x``
    (B, N, C): every token against the normalised centres of all its
    k * k candidates (:func:`candidate_windows`), gathered as one
    (B, N, k * k, C) tensor, and an argmax. 3-16 % of a ViT-S block on the
    CPU; kept as the oracle of the tests and the baseline of the
    benchmark."""
    b, n, c = x.shape
    centres = F.normalize(x.index_select(1, centre), dim=-1)
    near = centres.index_select(1, candidates.flatten()).view(b, n, -1, c)
    similarity = torch.matmul(near, x.unsqueeze(-1)).squeeze(-1)
    choice = similarity.argmax(-1, keepdim=True)
    return candidates.expand(b, -1, -1).gather(2, choice).squeeze(-1)


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
    window = torch.cat((torch.arange(k, device=tables.centre.device),
                        tables.pair_window))
    token = torch.cat((tables.centre, tables.pair_token))
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
    order = with_prefix(members.order, num_prefix)
    return tuple(torch.cat(parts, 1).index_select(1, order)
                 for parts in (sums, totals, squares))
