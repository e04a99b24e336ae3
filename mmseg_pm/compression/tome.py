"""Token Merging (ToMe, Bolya et al., ICLR 2023) inside the backbone, and the
merge-by-assignment pieces it shares with MSTM.

A merge step sends each of the T current tokens to one of K slots
(``assign``, (B, T) with values in [0, K)); a slot's new token is the
weighted average of its members. Composing the assignments gives the
*source map*: for every original token (class token included) the index of
the current token that holds it, so the full grid is one gather away at any
depth. Both compressors keep the class token alone in slot 0.

ToMe itself, per block that merges: keys averaged over heads, tokens split
alternately into sets A and B, each A token's most similar B token (cosine),
the ``r`` most similar of those edges merged (size-weighted averages), the
class token never merged. Token sizes then enter every later attention as a
``log(size)`` bias on the logits (proportional attention). Training-free.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from mmseg_pm.utils.errors import UsageError

from .config import check_keys, check_layers, per_layer
from .ops import cosine_similarity, initial_source, key_metric, merge_tokens
from .reducer import SourceMapReducer
from .registry import (SORTS_PER_IMAGE, SOURCE_MAP_NOTE, MethodSpec,
                       ModelShape, no_options, register)


def bipartite_scores(metric: Tensor, num_prefix: int = 1,
                     valid: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """ToMe's edges: tokens 0, 2, 4, ... form set A and 1, 3, 5, ... set B;
    each A token's best edge goes to its most similar B token (cosine).

    ``metric`` (B, T, d); ``valid`` (B, T) False at padding (a batch whose
    images hold different numbers of tokens): padding has no edge (-inf)
    and is never an edge's end. A prefix token (``num_prefix`` 0 or 1: the
    class token, token 0) has no edge. Returns the best score and its B
    index, (B, |A|) each.
    """
    with torch.no_grad():
        scores = cosine_similarity(metric[:, ::2], metric[:, 1::2])
        if num_prefix:
            scores[:, 0] = -torch.inf
        if valid is not None:
            scores = scores.masked_fill(~valid[:, None, 1::2], -torch.inf)
            scores = scores.masked_fill(~valid[:, ::2, None], -torch.inf)
        return scores.max(dim=-1)


def bipartite_assign(best: Tensor, match: Tensor, r: Tensor,
                     num_tokens: Tensor, total: int) -> Tuple[Tensor, Tensor]:
    """The slot of every token once image b merges its ``r[b]`` best edges
    (A token into its B match, size-weighted by :func:`merge_tokens`).

    ``best``, ``match`` from :func:`bipartite_scores` on ``total`` tokens;
    ``r`` and ``num_tokens`` (B,): merges and real tokens per image (any
    padding sits after them). Slots follow ToMe's output order: the
    unmerged A tokens in their original order, then every B token. Padding
    goes to slot ``max(num_tokens - r)``, one past the largest image's
    last slot. Returns (assign (B, total), slots per image (B,)).
    """
    b, num_a = best.shape
    device = best.device
    with torch.no_grad():
        order = best.argsort(dim=-1, descending=True, stable=True)
        rank = torch.empty_like(order).scatter_(
            1, order, torch.arange(num_a, device=device).expand(b, -1))
        real_a = (num_tokens + 1) // 2
        num_kept = (real_a - r)[:, None]
        slots = num_tokens - r
        pad_slot = slots.max()
        valid_a = torch.arange(num_a, device=device) < real_a[:, None]
        merged = rank < r[:, None]
        kept_slot = (valid_a & ~merged).long().cumsum(dim=1) - 1
        assign_a = torch.where(merged, num_kept + match, kept_slot)
        assign_a = torch.where(valid_a, assign_a, pad_slot)
        index_b = torch.arange(total // 2, device=device)
        assign_b = torch.where(index_b < (num_tokens // 2)[:, None],
                               num_kept + index_b, pad_slot)
        assign = torch.empty(b, total, dtype=torch.long, device=device)
        assign[:, ::2] = assign_a
        assign[:, 1::2] = assign_b
    return assign, slots


def bipartite_soft_matching(metric: Tensor, r: int,
                            num_prefix: int = 1) -> Tuple[Tensor, int]:
    """ToMe's matching: the slot of each token after merging ``r`` of them
    (the ``r`` A tokens with the most similar edges, see
    :func:`bipartite_scores` and :func:`bipartite_assign`) in every image.
    Returns (assign (B, T), number of slots T - r)."""
    b, t, _ = metric.shape
    best, match = bipartite_scores(metric, num_prefix)
    full = torch.full((b, ), t, device=metric.device)
    assign, _ = bipartite_assign(best, match, torch.full_like(full, r), full,
                                 t)
    return assign, t - r


def tome_merges(num_tokens: int, r: int, num_prefix: int) -> int:
    """``r`` capped at what bipartite matching can merge: half the
    mergeable tokens (ToMe's cap)."""
    return max(0, min(r, (num_tokens - num_prefix) // 2))


def capped_merges(rs: List[int], num_tokens: int,
                  num_prefix: int = 1) -> List[int]:
    """The ``r`` each consecutive block really merges (see
    :func:`tome_merges`) for ``num_tokens`` input tokens."""
    capped = []
    for r in rs:
        capped.append(tome_merges(num_tokens, r, num_prefix))
        num_tokens -= capped[-1]
    return capped


def check_tome_merges(merges: Dict[int, int], num_tokens: int,
                      num_prefix: int, where: str = '') -> None:
    """Refuse an ``r`` larger than what bipartite matching can merge in its
    block (half the mergeable tokens the block has, after the merges of
    the blocks before it), for ``num_tokens`` input tokens."""
    for block in sorted(merges):
        cap = tome_merges(num_tokens, num_tokens, num_prefix)
        if merges[block] > cap:
            raise ValueError(
                f'ToMe r={merges[block]} at block {block}: the block has '
                f'{num_tokens} tokens{where} and can merge at most {cap} '
                f'(half of those it may merge); use r <= {cap} there')
        num_tokens -= merges[block]


class ToMeState(NamedTuple):
    source: Tensor  # (B, T0): current token of every original token
    size: Optional[Tensor]  # (B, T) original tokens per current token


class ToMe(nn.Module, SourceMapReducer):
    """ToMe in the backbone: each block of ``r`` merges ``r[block]`` tokens
    between its attention and its MLP; every block after a merge uses
    proportional attention. No parameters.

    A :class:`TokenReducer` (the backbone drives it through that interface).
    """

    method = 'tome'

    def __init__(self, r: Dict[int, int], num_prefix: int = 1):
        super().__init__()
        self.r = dict(sorted(r.items()))
        self.num_prefix = num_prefix

    def start(self, x: Tensor, hw: Tuple[int, int]) -> ToMeState:
        return ToMeState(initial_source(x), None)

    def run_block(self, i: int, layer: nn.Module, x: Tensor,
                  state: ToMeState) -> Tuple[Tensor, ToMeState]:
        """Block ``i`` on ``x``."""
        bias = None
        if state.size is not None:  # proportional attention
            bias = state.size.log()[:, None, None, :]
        r = tome_merges(x.shape[1], self.r.get(i, 0), self.num_prefix)
        if r == 0:
            self.record_source(i, state.source)
            return layer(x, bias), state
        x, _, k = layer.attention_residual(x, bias)
        assign, num_slots = bipartite_soft_matching(key_metric(k), r,
                                                    self.num_prefix)
        size = state.size if state.size is not None else x.new_ones(
            x.shape[:2])
        x, size = merge_tokens(x, assign, size, num_slots)
        source = assign.gather(1, state.source)
        self.record_source(i, source)
        return layer.mlp_residual(x), ToMeState(source, size)

    def merging_blocks(self) -> List[int]:
        return [i for i, r in self.r.items() if r > 0]

    def blocks(self, num_layers: int) -> List[int]:
        merging = self.merging_blocks()
        return list(range(merging[0], num_layers)) if merging else []

    def tokens_per_block(self, num_tokens: int, num_layers: int) -> List[int]:
        """Tokens each block outputs (its MLP runs on them), class token
        included, for ``num_tokens`` input tokens."""
        counts = []
        for i in range(num_layers):
            num_tokens -= tome_merges(num_tokens, self.r.get(i, 0),
                                      self.num_prefix)
            counts.append(num_tokens)
        return counts

    def extra_repr(self) -> str:
        return f'r={self.r}, num_prefix={self.num_prefix}'


@dataclass(frozen=True)
class ToMeConfig:
    """Token Merging (``method='tome'``): ``r`` maps each block of
    ``layers`` (default: every block) to the number of tokens it merges
    away (the key ``r`` may be one int or one per layer)."""

    method: ClassVar[str]  # set by register()
    r: Dict[int, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, cfg: dict, num_layers: int) -> 'ToMeConfig':
        cfg = dict(cfg)
        check_keys(cfg, {'method', 'layers', 'r'}, 'tome')
        if 'r' not in cfg:
            raise UsageError("method='tome' needs r= (tokens merged per "
                             'block: an int, or a list with one per layer)')
        given = cfg.get('layers', list(range(num_layers)))
        layers = check_layers(given, num_layers, 'layers')
        rs = per_layer(cfg['r'], list(given), 'r')
        for r in rs:
            if isinstance(r, bool) or not isinstance(r, int) or r < 0:
                raise UsageError(f'r must be a non-negative int, got {r!r}')
        merges = dict(zip((int(i) for i in given), rs))
        return cls(r={i: merges[i] for i in layers})

    def build_reducer(self, grid: Tuple[int, int], embed_dims: int,
                      num_prefix: int, img_size) -> ToMe:
        check_tome_merges(self.r, grid[0] * grid[1] + num_prefix,
                          num_prefix, f' (the tokens of img_size={img_size})')
        return ToMe(self.r, num_prefix)


# ---------------------------------------------------------------- knob
def tome_schedule(total_merges: int, num_layers: int) -> List[int]:
    """``r`` per block for ``total_merges`` spread evenly, front-loaded."""
    if total_merges < 0:
        raise ValueError(f'total_merges must be >= 0, got {total_merges}')
    base, extra = divmod(total_merges, num_layers)
    return [base + (1 if i < extra else 0) for i in range(num_layers)]


def tome_r(knob: int, num_layers: int, num_tokens: int) -> List[int]:
    """``r`` per block: the schedule capped at what each block can merge
    (patch tokens plus the class token; the backbone refuses more)."""
    return capped_merges(tome_schedule(knob, num_layers), num_tokens + 1)


def _knob_range(shape: ModelShape) -> Tuple[int, int]:
    # ToMe caps each block at half its tokens
    return 0, shape.num_layers * (shape.num_tokens // 2)


def _knob_compression(knob: int, shape: ModelShape, **options) -> dict:
    no_options(SPEC.name, options)
    return dict(method=SPEC.name, layers=list(range(shape.num_layers)),
                r=tome_r(knob, shape.num_layers, shape.num_tokens))


def _knob_text(knob: int, shape: ModelShape) -> str:
    r = tome_r(knob, shape.num_layers, shape.num_tokens)
    return f'r={r[0]}' if len(set(r)) == 1 else f'r={"/".join(map(str, r))}'


SPEC = MethodSpec(
    name=ToMe.method, label='ToMe',
    knob=('the total number of merges q spread over the blocks as evenly '
          'as possible (q // L per block, one more in the first q % L '
          'blocks), so its FLOPs move in steps far finer than one r'),
    knob_range=_knob_range, knob_compression=_knob_compression,
    knob_text=_knob_text, fixed_shapes=True, per_image_merges=True,
    exports=False,
    no_export=SORTS_PER_IMAGE,
    marker='v',
    picture_note=SOURCE_MAP_NOTE,
    config=ToMeConfig)
register(SPEC)
