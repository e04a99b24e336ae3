"""Low-level token operations shared by the reducers: segment sums,
gathers, window tables and the explicit matrices they stand for.

Every merge here is a weighted segment sum (``out[g] += w_p x_p``) and
every reconstruction a gather and a scale. Eager runs use ``index_add``;
what is exported to ONNX uses the gather-only forms
(:func:`tabled_segment_sum`): onnxruntime runs a ScatterND-add with
repeated indices on several threads without synchronisation and loses
updates (microsoft/onnxruntime#18048; measured here on the ViT-S backbone
at keep 0.5, 2 threads: 0.02-0.12 max abs error in about half the runs).
The dense matrices are the authors' formulation, kept as the reference the
tests compare against.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def autocast_off(device_type: str) -> torch.autocast:
    """Autocast off on ``device_type``: what runs inside computes in the
    dtype of its operands (which tokens merge must not hinge on bf16/fp16
    rounding)."""
    return torch.autocast(device_type, enabled=False)


def key_metric(k: Tensor) -> Tensor:
    """(B, heads, T, d) keys -> (B, T, d): what token similarity is
    measured on (ToMe's choice: the keys averaged over heads)."""
    return k.mean(dim=1)


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """Per image, ``x[b, index[b]]``: (B, T, C) and (B, M) -> (B, M, C)."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def initial_source(x: Tensor) -> Tensor:
    """The source map before any merge: every token holds itself."""
    b, t, _ = x.shape
    return torch.arange(t, device=x.device).expand(b, t)


def cosine_similarity(a: Tensor, b: Tensor) -> Tensor:
    """(..., M, d) x (..., N, d) -> (..., M, N) cosine similarities, in
    fp32 with autocast off: which tokens merge must not hinge on bf16/fp16
    rounding (the product is a matmul, so torch's FLOP counter counts it)."""
    with autocast_off(a.device.type):
        a = F.normalize(a.float(), dim=-1)
        b = F.normalize(b.float(), dim=-1)
        return a @ b.transpose(-1, -2)


def padding_bias(valid: Optional[Tensor], dtype: torch.dtype
                 ) -> Optional[Tensor]:
    """(B, 1, 1, T) attention bias of a padded batch: -inf at the keys
    where ``valid`` (B, T) is False, 0 elsewhere (None: no padding)."""
    if valid is None:
        return None
    zero = torch.zeros((), dtype=dtype, device=valid.device)
    return torch.where(valid, zero, -torch.inf)[:, None, None, :]


def batched_rows(index: Tensor, batch: int, rows: int) -> Tensor:
    """``index`` repeated for each of ``batch`` stacked blocks of ``rows``
    rows, as indices into the flattened (batch * rows, C) tensor.

    A gather or scatter along dim 1 of (B, T, C) becomes one along dim 0,
    which CPU kernels run several times faster (whole contiguous rows).
    """
    offsets = torch.arange(batch, device=index.device) * rows
    return (offsets[:, None] + index[None]).flatten()


def per_image_rows(assign: Tensor, num_slots: int) -> Tensor:
    """(B, T) slot of every token -> rows of the flattened
    (B * num_slots, C) merged tensor."""
    offsets = torch.arange(assign.shape[0], device=assign.device)
    return (offsets[:, None] * num_slots + assign).flatten()


def segment_sum(x: Tensor, index: Optional[Tensor], weight: Tensor,
                num_groups: int, rows: Optional[Tensor] = None) -> Tensor:
    """``out[b, index[p]] += weight[p] * x[b, p]``: (B, N, C) -> (B, G, C).

    ``rows`` is ``batched_rows(index, B, num_groups)`` if already known.
    """
    b, n, c = x.shape
    if rows is None:
        rows = batched_rows(index, b, num_groups)
    src = (x * weight.to(x.dtype)[:, None]).reshape(b * n, c)
    out = x.new_zeros(b * num_groups, c)
    return out.index_add_(0, rows, src).view(b, num_groups, c)


def gather_scale(y: Tensor, index: Optional[Tensor], weight: Tensor,
                 rows: Optional[Tensor] = None) -> Tensor:
    """``x[b, p] = weight[.., p] * y[b, index[p]]``: (B, K, C) -> (B, N, C);
    ``weight`` (N,) or per image (B, N).

    ``rows`` is ``batched_rows(index, B, K)`` (or ``per_image_rows``) if
    already known. Scales in place when autograd does not need the
    gathered values.
    """
    b, k, c = y.shape
    if rows is None:
        rows = batched_rows(index, b, k)
    out = y.reshape(b * k, c).index_select(0, rows).view(b, -1, c)
    weight = weight.to(y.dtype)[..., None]
    if torch.is_grad_enabled() and (out.requires_grad or weight.requires_grad):
        return out * weight
    return out.mul_(weight)


def merge_tokens(x: Tensor, assign: Tensor, weight: Tensor,
                 num_slots: int) -> Tuple[Tensor, Tensor]:
    """Weighted average of the tokens of every slot, each image its own way.

    ``x`` (B, T, C), ``assign`` (B, T) slot of each token, ``weight`` (B, T)
    or (T,), non-negative. Returns the merged tokens (B, K, C) and each
    slot's total weight (B, K). One segment sum over the flattened batch.
    The sums are float32 in a half-precision model (bfloat16 sums of many
    tokens lose their last members), the results of ``x``'s dtype. A slot
    without weight (padding of a batch whose images keep different numbers
    of tokens) is all zeros. The one merge every reducer uses.
    """
    b, _, c = x.shape
    slots = per_image_rows(assign, num_slots)
    acc = torch.promote_types(x.dtype, torch.float32)
    weight = weight.to(acc).expand(b, -1)
    total = slot_totals(weight, slots, num_slots)
    summed = weight.new_zeros(b * num_slots, c).index_add(
        0, slots, (x.to(acc) * weight[..., None]).flatten(0, 1))
    nonzero = total.clamp_min(torch.finfo(total.dtype).tiny)
    merged = (summed.view(b, num_slots, c) / nonzero[..., None]).to(x.dtype)
    return merged, total.to(x.dtype)


def slot_totals(weight: Tensor, rows: Tensor, num_slots: int) -> Tensor:
    """(B, K) sum of ``weight`` (B, T) over the tokens of every slot;
    ``rows``: :func:`per_image_rows` of the (B, T) assignment."""
    b = weight.shape[0]
    return weight.new_zeros(b * num_slots).index_add_(
        0, rows, weight.flatten()).view(b, num_slots)


def member_tables(window: Tensor, token: Tensor, num_windows: int
                  ) -> Tuple[List[Tensor], Tensor, Tensor]:
    """The (window, token) pairs as a few padded tables, one per size
    class: windows of 1, 2, 3-4, 5-8, ... members, each row one window's
    tokens in the pairs' order, padded with -1. Every window needs a pair.

    Returns (tables, windows, order): ``windows`` the window of every row
    of the tables stacked in class order, ``order[k]`` the row of window k.
    """
    size = torch.bincount(window, minlength=num_windows)
    if bool((size == 0).any()):
        raise ValueError('member_tables: a window without tokens')
    sort = torch.argsort(window, stable=True)
    members = token[sort]
    start = torch.cumsum(size, 0) - size
    width = 2 ** torch.ceil(torch.log2(size.double())).long()
    tables, windows = [], []
    for w in torch.unique(width).tolist():
        rows = torch.nonzero(width == w).flatten()
        slot = torch.arange(w, device=window.device)
        index = (start[rows, None] + slot).clamp(max=members.numel() - 1)
        valid = slot < size[rows, None]
        tables.append(torch.where(valid, members[index], -1))
        windows.append(rows)
    windows = torch.cat(windows)
    return tables, windows, torch.argsort(windows)


def window_tables(group: Tensor) -> Tuple[List[Tensor], Tensor]:
    """:func:`member_tables` of a static structure (``group``: window of
    every token, -1 pruned): (tables, order)."""
    kept = torch.nonzero(group >= 0).flatten()
    tables, _, order = member_tables(group[kept], kept, int(group.max()) + 1)
    return tables, order


def tabled_segment_sum(x: Tensor, weight: Tensor, tables: Sequence[Tensor],
                       order: Tensor, num_prefix: int = 0) -> Tensor:
    """The segment sum of :func:`segment_sum` by gathers and sums over the
    :func:`window_tables` of the windows: (B, P + N, C) -> (B, P + G, C),
    no row written twice (what is exported). The ``num_prefix`` = P
    leading tokens are windows of their own; ``weight`` (N,) and the tables
    are over the others."""
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
    return torch.cat(sums, 1).index_select(1, with_prefix(order, num_prefix))


def merge_matrix(group: Tensor, weight: Tensor, num_groups: int) -> Tensor:
    """Dense (K, N) merge matrix with ``weight[p]`` at ``(group[p], p)``."""
    kept = torch.nonzero(group >= 0).flatten()
    m = weight.new_zeros(num_groups, group.numel())
    return m.index_put((group[kept], kept), weight[kept])


def reconstruct_matrix(group: Tensor, weight: Tensor, num_groups: int) -> Tensor:
    """Dense (N, K) reconstruct matrix with ``weight[p]`` at ``(p, group[p])``."""
    return merge_matrix(group, weight, num_groups).t()


def assignment_matrices(assign: Tensor, weight: Tensor,
                        num_slots: int) -> Tensor:
    """Per-image dense merge matrices (B, S, T): ``weight[p]`` at
    ``(assign[b, p], p)``: the reference of a per-image merge."""
    slots = torch.arange(num_slots, device=assign.device)
    one_hot = (assign[:, None, :] == slots[None, :, None]).to(weight.dtype)
    return one_hot * weight


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
