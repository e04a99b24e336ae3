"""Multi-Scale And Token Mergence (MSTM; Bian et al., arXiv 2306.04897),
as this project reads its abstract (no code was released; docs/peers.md).

At each pruning block, between its attention and its MLP:

* importance of a patch token = the class token's attention to it,
  averaged over heads (that block's own attention);
* crucial tokens = the top ``keep_rate`` of the current patch tokens;
* every other token joins its most similar crucial token (cosine similarity
  of the keys); a group's token is the importance-weighted average of its
  members, the crucial token included with its own importance.

Multi-scale: 2x2-average-pooled tokens of the patch embedding, projected by
a linear layer that starts at zero, are added to the fine tokens (each gets
its cell's coarse token) before the first pruning block, so a pretrained
dense model is unchanged at initialisation.

Token counts per block are fixed (batches stay rectangular) but which
tokens merge depends on the image. The source map (tome.py) brings the full
grid back at any depth.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmseg_pm.utils.errors import UsageError

from .config import (check_flag, check_keys, check_layers, check_number,
                     per_layer)
from .ops import (autocast_off, cosine_similarity, gather_tokens,
                  initial_source, key_metric, merge_tokens)
from .reducer import SourceMapReducer
from .registry import (SORTS_PER_IMAGE, SOURCE_MAP_NOTE, MethodSpec,
                       ModelShape, compressible_blocks, keep_rate_for,
                       no_options, register)


def class_attention(q: Tensor, k: Tensor) -> Tensor:
    """The class token's attention to each patch token, averaged over heads:
    (B, heads, T, d) queries and keys -> (B, T - 1). Only the class row of
    the attention is computed, in float32 (it ranks the tokens: see
    :func:`cosine_similarity`)."""
    with autocast_off(q.device.type):
        q, k = q[:, :, :1].float(), k.float()
        logits = (q / math.sqrt(q.shape[-1])) @ k.transpose(-2, -1)
        return torch.softmax(logits, dim=-1).mean(dim=1)[:, 0, 1:]


def num_crucial(num_tokens: int, keep_rate: float) -> int:
    """Crucial tokens kept out of ``num_tokens`` patch tokens (at least 1)."""
    return max(1, int(keep_rate * num_tokens))


def crucial_token_matching(metric: Tensor, importance: Tensor,
                           num_keep: int) -> Tensor:
    """Slot of each patch token: the ``num_keep`` most important tokens are
    the slots (in their original order); every other token goes to the slot
    of its most similar crucial token.

    ``metric`` (B, N, d), ``importance`` (B, N). Returns (B, N) in
    [0, num_keep).
    """
    b = metric.shape[0]
    with torch.no_grad():
        order = importance.argsort(dim=1, descending=True, stable=True)
        crucial = order[:, :num_keep].sort(dim=1).values
        others = order[:, num_keep:]
        similarity = cosine_similarity(gather_tokens(metric, others),
                                       gather_tokens(metric, crucial))
        assign = torch.empty_like(order)
        assign.scatter_(1, crucial, torch.arange(
            num_keep, device=metric.device).expand(b, -1))
        assign.scatter_(1, others, similarity.argmax(dim=-1))
    return assign


def coarse_cells(hw: Tuple[int, int], device=None) -> Tuple[Tensor, int]:
    """Index of the 2x2 cell of every token of an H x W raster grid (odd
    edges give 1- or 2-token cells), and the number of cells."""
    h, w = hw
    rows = torch.arange(h, device=device) // 2
    cols = torch.arange(w, device=device) // 2
    cells_per_row = math.ceil(w / 2)
    cell = (rows[:, None] * cells_per_row + cols[None, :]).flatten()
    return cell, math.ceil(h / 2) * cells_per_row


class CoarseBranch(nn.Module):
    """Each token's 2x2 cell mean, linearly projected.

    The projection is held as plain parameters that start at zero (not an
    ``nn.Linear``, which the backbone's weight initialisation would
    re-draw), so adding the branch leaves a pretrained model unchanged until
    it is trained.
    """

    def __init__(self, embed_dims: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(embed_dims, embed_dims))
        self.bias = nn.Parameter(torch.zeros(embed_dims))

    def forward(self, tokens: Tensor, hw: Tuple[int, int]) -> Tensor:
        """(B, H*W, C) patch tokens -> (B, H*W, C) projected cell means."""
        cell, num_cells = coarse_cells(hw, tokens.device)
        count = tokens.new_zeros(num_cells).index_add(
            0, cell, tokens.new_ones(cell.shape))
        pooled = tokens.new_zeros(tokens.shape[0], num_cells,
                                  tokens.shape[2]).index_add(1, cell, tokens)
        coarse = F.linear(pooled / count[:, None], self.weight, self.bias)
        return coarse.index_select(1, cell)


class MSTMState(NamedTuple):
    source: Tensor  # (B, T0): current token of every original token
    coarse: Optional[Tensor]  # (B, H*W, C) coarse tokens until fused


class MSTM(nn.Module, SourceMapReducer):
    """MSTM in the backbone. ``keep_rates`` maps each pruning block to the
    fraction of the current patch tokens it keeps as crucial tokens.
    Needs the class token (its attention is the importance).

    A :class:`TokenReducer` (the backbone drives it through that interface).
    """

    method = 'mstm'
    num_prefix = 1  # the class token, whose attention ranks the tokens

    def __init__(self, embed_dims: int, keep_rates: Dict[int, float],
                 coarse: bool = True):
        super().__init__()
        if not keep_rates:
            raise ValueError('MSTM needs at least one pruning layer')
        self.keep_rates = dict(sorted(keep_rates.items()))
        self.fuse_layer = min(self.keep_rates)
        self.coarse = CoarseBranch(embed_dims) if coarse else None

    def start(self, x: Tensor, hw: Tuple[int, int]) -> MSTMState:
        p = self.num_prefix
        coarse = None if self.coarse is None else self.coarse(x[:, p:], hw)
        return MSTMState(initial_source(x), coarse)

    def fuse_coarse(self, i: int, x: Tensor,
                    state: MSTMState) -> Tuple[Tensor, MSTMState]:
        """The coarse tokens added before the first pruning block."""
        if i == self.fuse_layer and state.coarse is not None:
            p = self.num_prefix
            x = torch.cat((x[:, :p], x[:, p:] + state.coarse), dim=1)
            state = state._replace(coarse=None)
        return x, state

    def dense_block(self, i: int, block: nn.Module, x: Tensor,
                    state: MSTMState) -> Tuple[Tensor, MSTMState]:
        """Block ``i`` on all tokens: the coarse branch still runs (it is
        part of the model, not a merge)."""
        x, state = self.fuse_coarse(i, x, state)
        return block(x), state

    def run_block(self, i: int, layer: nn.Module, x: Tensor,
                  state: MSTMState) -> Tuple[Tensor, MSTMState]:
        """Block ``i`` on ``x``: fuses the coarse tokens before the first
        pruning block; merges at pruning blocks."""
        x, state = self.fuse_coarse(i, x, state)
        p = self.num_prefix
        num_patches = x.shape[1] - p
        num_keep = num_patches
        if i in self.keep_rates:
            num_keep = num_crucial(num_patches, self.keep_rates[i])
        if num_keep == num_patches:
            self.record_source(i, state.source)
            return layer(x), state
        x, q, k = layer.attention_residual(x)
        importance = class_attention(q, k)
        patch_slots = crucial_token_matching(key_metric(k)[:, p:], importance,
                                             num_keep)
        assign = F.pad(patch_slots + p, (p, 0))  # class token: slot 0
        # an underflowed softmax must not leave a group with zero weight
        importance = importance.clamp_min(torch.finfo(importance.dtype).tiny)
        weight = F.pad(importance, (p, 0), value=1.0)
        x, _ = merge_tokens(x, assign, weight, num_keep + p)
        source = assign.gather(1, state.source)
        self.record_source(i, source)
        return layer.mlp_residual(x), state._replace(source=source)

    def merging_blocks(self) -> List[int]:
        return list(self.keep_rates)

    def blocks(self, num_layers: int) -> List[int]:
        return list(range(min(self.keep_rates), num_layers))

    def tokens_per_block(self, num_tokens: int, num_layers: int) -> List[int]:
        """Tokens each block outputs (its MLP runs on them), class token
        included, for ``num_tokens`` input tokens."""
        counts, num_patches = [], num_tokens - self.num_prefix
        for i in range(num_layers):
            if i in self.keep_rates:
                num_patches = num_crucial(num_patches, self.keep_rates[i])
            counts.append(num_patches + self.num_prefix)
        return counts

    def extra_repr(self) -> str:
        return f'keep_rates={self.keep_rates}'


@dataclass(frozen=True)
class MSTMConfig:
    """Multi-Scale And Token Mergence (``method='mstm'``).

    At each block of ``prune_layers`` the top ``keep_rate`` of the current
    patch tokens (by class-token attention) stay; every other token is merged
    into its most similar kept token. ``keep_rates`` maps each pruning block
    to its rate (``keep_rate`` may be one float or one per pruning layer).
    ``coarse``: fuse the zero-initialised 2x2 coarse branch into the tokens
    before the first pruning layer.
    """

    method: ClassVar[str]  # set by register()
    keep_rates: Dict[int, float] = field(default_factory=dict)
    coarse: bool = True

    @classmethod
    def from_dict(cls, cfg: dict, num_layers: int) -> 'MSTMConfig':
        cfg = dict(cfg)
        check_keys(cfg, {'method', 'prune_layers', 'keep_rate', 'coarse'},
                    'mstm')
        if 'prune_layers' not in cfg:
            raise UsageError("method='mstm' needs prune_layers=[...] (the "
                             'blocks that merge tokens), e.g. [2, 5, 8]')
        given = cfg['prune_layers']
        layers = check_layers(given, num_layers, 'prune_layers')
        rates = per_layer(cfg.get('keep_rate', 0.7), list(given), 'keep_rate')
        for rate in rates:
            if not 0 < check_number(rate, 'keep_rate') <= 1:
                raise UsageError(f'keep_rate must be in (0, 1], got {rate}')
        keep_rates = {int(i): float(r) for i, r in zip(given, rates)}
        coarse = check_flag(cfg.get('coarse', True), 'coarse')
        return cls(keep_rates={i: keep_rates[i] for i in layers},
                   coarse=coarse)

    def build_reducer(self, grid: Tuple[int, int], embed_dims: int,
                      num_prefix: int, img_size) -> MSTM:
        if num_prefix != MSTM.num_prefix:
            raise UsageError(
                "compression method='mstm' ranks tokens by the class "
                "token's attention and needs with_cls_token=True; use "
                "method='tome' or 'pm' for a model without a class token")
        return MSTM(embed_dims, self.keep_rates, self.coarse)

    @property
    def prune_layers(self) -> List[int]:
        return list(self.keep_rates)


# ---------------------------------------------------------------- knob
def mstm_layers(num_layers: int) -> List[int]:
    """MSTM's pruning blocks: every other block from block 1, at most three
    (the ViT-S config prunes at 3 of 12 blocks)."""
    compressible_blocks(num_layers)
    return list(range(1, max(num_layers - 1, 2), 2))[:3]


def _knob_range(shape: ModelShape) -> Tuple[int, int]:
    return 1, shape.num_tokens


def _knob_compression(knob: int, shape: ModelShape, **options) -> dict:
    no_options(SPEC.name, options)
    return dict(method=SPEC.name, prune_layers=mstm_layers(shape.num_layers),
                keep_rate=keep_rate_for(knob, shape.num_tokens), coarse=True)


def _knob_text(knob: int, shape: ModelShape) -> str:
    return (f'keep {knob / shape.num_tokens:.2f} at blocks '
            f'{mstm_layers(shape.num_layers)}')


SPEC = MethodSpec(
    name=MSTM.method, label='MSTM',
    knob=('the crucial tokens kept at its first pruning block (every '
          'pruning block keeps the same fraction of its current tokens)'),
    knob_range=_knob_range, knob_compression=_knob_compression,
    knob_text=_knob_text, fixed_shapes=True, per_image_merges=True,
    exports=False,
    no_export=SORTS_PER_IMAGE,
    marker='^',
    picture_note=SOURCE_MAP_NOTE,
    config=MSTMConfig)
register(SPEC)
