"""Mutual Pair Merging (MPM; Ravé, Rasti, Rousseau, CVPR 2026 Findings,
arXiv 2604.05718; the authors' code: saulane/MPM) inside the backbone.
Training-free, no parameters, no keep rate or threshold: the blocks of
``layers`` (0-based) are the only setting (the authors' default (2, 5),
before the 3rd and the 6th block, for every backbone).

Before each block of ``layers``, on the residual stream at the block's input
(before its first norm) and on the patch tokens only (the class token is
never merged):

* cosine similarity of every pair of tokens, self-pairs excluded;
  ``b(i) = argmax_j`` (the first index on a tie, as ``torch.argmax``);
* i and b(i) form a pair when ``b(b(i)) = i`` (mutual nearest neighbours).
  Pairs are disjoint, so at most half the tokens go per insertion;
* a pair becomes one token, the plain mean of its two current tokens (no
  size weights: a token that already holds several original positions
  counts once, as in the authors' code); every unpaired token stays;
* the new tokens keep raster order: a pair sits where its lower index was,
  so the tokens are always ordered by the first original position they hold.

The map of every insertion (current token -> new token) composes with the
ones before into the source map (original position -> current token), and
every ``out_indices`` output is the full grid again by one gather through it
(the authors gather once, after the last block, before the final norm and
the decoder; a per-token norm commutes with the gather).

Batches: each image pairs its own tokens, so images keep different counts.
As in the authors' Segmenter fork, the batch is padded to its largest image
and padded keys are masked out of every attention (here a -inf attention
bias, as ALGM's); padding never enters a similarity, a pair or a mean, so an
image gives the same result alone or in any batch. The similarities run in
fp32 with autocast off (the authors' run in the model's dtype): which tokens
pair must not hinge on bf16/fp16 rounding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from mmseg_pm.utils.errors import UsageError

from .config import check_keys, check_layers
from .ops import cosine_similarity, initial_source, merge_tokens, padding_bias
from .reducer import SourceMapReducer
from .registry import (SOURCE_MAP_NOTE, MethodSpec, ModelShape,
                       compressible_blocks, no_options, register)

DEFAULT_LAYERS = (2, 5)


# ---------------------------------------------------------------- pure
def mutual_partners(tokens: Tensor, valid: Optional[Tensor] = None
                    ) -> Tensor:
    """The mutual nearest neighbour of every token, or the token itself.

    ``tokens`` (B, N, C); ``valid`` (B, N) False at padding, which is never
    anyone's neighbour and has none. Token i's nearest neighbour b(i) is
    the other valid token of highest cosine similarity (the first on a
    tie); i pairs with b(i) when b(b(i)) = i. Returns (B, N) long:
    ``partner[b, i]`` = b(i) for a paired token, i otherwise (a token with
    no other valid token to compare with is unpaired).
    """
    b, n, _ = tokens.shape
    device = tokens.device
    index = torch.arange(n, device=device).expand(b, n)
    with torch.no_grad():
        sim = cosine_similarity(tokens, tokens)  # (B, N, N), fp32
        sim.diagonal(dim1=-2, dim2=-1).fill_(-torch.inf)
        if valid is not None:
            sim = sim.masked_fill(~valid[:, None, :], -torch.inf)
            sim = sim.masked_fill(~valid[:, :, None], -torch.inf)
        has = torch.isfinite(sim).any(dim=-1)
        best = torch.where(has, sim.argmax(dim=-1), index)
        mutual = (best.gather(1, best) == index) & (best != index)
        if valid is not None:
            mutual &= valid
    return torch.where(mutual, best, index)


def pair_assign(partner: Tensor, valid: Optional[Tensor] = None
                ) -> Tuple[Tensor, Tensor]:
    """The new token of every token once each pair of ``partner`` (from
    :func:`mutual_partners`) becomes one token.

    New tokens are numbered in the order of their lower index (raster order
    kept; unpaired tokens are pairs of one). Padding (``valid`` False) goes
    to ``counts.max()``, one past the largest image's last token. Returns
    (assign (B, N) long, counts (B,): new tokens per image).
    """
    b, n = partner.shape
    index = torch.arange(n, device=partner.device).expand(b, n)
    if valid is None:
        valid = torch.ones_like(partner, dtype=torch.bool)
    with torch.no_grad():
        first = valid & (partner >= index)  # unpaired, or the lower of two
        slot = first.long().cumsum(dim=1) - 1
        assign = slot.gather(1, torch.minimum(index, partner))
        counts = first.sum(dim=1)
        assign = torch.where(valid, assign, counts.max())
    return assign, counts


def merge_by_map(tokens: Tensor, assign: Tensor, counts: Tensor,
                 valid: Optional[Tensor] = None) -> Tensor:
    """The plain mean of the tokens each new token gathers (every current
    token weighs 1, padding 0): (B, N, C) -> (B, counts.max(), C), an
    image's slots after its own count all zeros (padding)."""
    num = int(counts.max())
    weight = tokens.new_ones(assign.shape) if valid is None else \
        valid.to(tokens.dtype)
    merged, _ = merge_tokens(tokens, assign, weight, num + 1)
    return merged[:, :num]


def compose_maps(source: Tensor, assign: Tensor) -> Tensor:
    """The map after a merge: ``source`` (B, T0) sends each original token
    to a current token, ``assign`` (B, T) each current token to a new
    one; their composition (B, T0) sends it to its new token."""
    return assign.gather(1, source)


# ---------------------------------------------------------------- reducer
class MPMState(NamedTuple):
    source: Tensor  # (B, T0): current token of every original token
    valid: Optional[Tensor]  # (B, T) False at padding; None: no padding


class MPM(nn.Module, SourceMapReducer):
    """MPM in the backbone: before every block of ``layers`` (0-based), the
    mutual nearest-neighbour pairs of the patch tokens become their means.
    No parameters.

    A :class:`TokenReducer` (the backbone drives it through that
    interface); with ``trace_counts`` set, :attr:`last_counts` says what
    each image of the last forward pass kept.
    """

    method = 'mpm'

    def __init__(self, layers: Sequence[int] = DEFAULT_LAYERS,
                 num_prefix: int = 1):
        super().__init__()
        self.layers = tuple(sorted(int(i) for i in layers))
        self.num_prefix = num_prefix

    def start(self, x: Tensor, hw: Tuple[int, int]) -> MPMState:
        return MPMState(initial_source(x), None)

    def merge(self, x: Tensor, state: MPMState) -> Tuple[Tensor, MPMState]:
        """One insertion: (B, T, C) tokens -> the merged tokens (padded to
        the batch's largest image) and the new state."""
        prefix = self.num_prefix
        patches = x[:, prefix:]
        valid = None if state.valid is None else state.valid[:, prefix:]
        partner = mutual_partners(patches, valid)
        assign, counts = pair_assign(partner, valid)
        merged = merge_by_map(patches, assign, counts, valid)
        b = x.shape[0]
        head = torch.arange(prefix, device=x.device).expand(b, prefix)
        source = compose_maps(state.source,
                              torch.cat((head, prefix + assign), dim=1))
        new_valid = None
        num = merged.shape[1]
        if bool((counts < num).any()):
            kept = torch.arange(num, device=x.device) < counts[:, None]
            new_valid = torch.cat((kept.new_ones(b, prefix), kept), dim=1)
        return torch.cat((x[:, :prefix], merged), dim=1), \
            MPMState(source, new_valid)

    def run_block(self, i: int, layer: nn.Module, x: Tensor,
                  state: MPMState) -> Tuple[Tensor, MPMState]:
        """Block ``i`` on ``x``, merging the tokens first when ``i`` is one
        of :attr:`layers`."""
        if i in self.layers:
            x, state = self.merge(x, state)
        self.record_source(i, state.source)
        out = layer(x, padding_bias(state.valid, x.dtype))
        self.record_counts(i, out, state.valid)
        return out, state

    # ------------------------------------------------------------ questions
    def merging_blocks(self) -> List[int]:
        return list(self.layers)

    def blocks(self, num_layers: int) -> List[int]:
        return list(range(self.layers[0], num_layers)) if self.layers else []

    def extra_repr(self) -> str:
        return f'layers={self.layers}, num_prefix={self.num_prefix}'


@dataclass(frozen=True)
class MPMConfig:
    """Mutual Pair Merging (``method='mpm'``; mpm.py), training-free.

    ``layers``: the blocks (0-based) before which the mutual nearest-
    neighbour pairs of the patch tokens become their means; the authors'
    default (2, 5), before the 3rd and the 6th block, on every backbone.
    There is no other setting (no keep rate, no threshold).
    """

    method: ClassVar[str]  # set by register()
    layers: Tuple[int, ...] = DEFAULT_LAYERS

    @classmethod
    def from_dict(cls, cfg: dict, num_layers: int) -> 'MPMConfig':
        cfg = dict(cfg)
        check_keys(cfg, {'method', 'layers'}, 'mpm')
        if 'layers' not in cfg and max(DEFAULT_LAYERS) >= num_layers:
            raise UsageError(
                f"method='mpm' merges before blocks {DEFAULT_LAYERS} by default "
                f'but the backbone has {num_layers} blocks '
                f'(0..{num_layers - 1}); give layers=[...] inside them')
        layers = check_layers(cfg.get('layers', DEFAULT_LAYERS), num_layers,
                               'layers')
        return cls(layers=tuple(layers))

    def build_reducer(self, grid: Tuple[int, int], embed_dims: int,
                      num_prefix: int, img_size) -> MPM:
        return MPM(self.layers, num_prefix)


# ---------------------------------------------------------------- knob
AUTHORS_STRIDE = 3  # the default (2, 5): a second insertion 3 blocks later


def knob_layers(knob: int, num_layers: int) -> Tuple[int, ...]:
    """The schedule at ``knob`` in [1, L - 1]: a first insertion before
    block L - knob and, where it fits, a second one 3 blocks later (the
    authors' spacing): each step moves both one block earlier, so the
    FLOPs fall with the knob. At 12 blocks, knob 10 is the authors' (2, 5).
    """
    first = num_layers - knob
    second = first + AUTHORS_STRIDE
    return (first, second) if second < num_layers else (first, )


def _knob_range(shape: ModelShape) -> Tuple[int, int]:
    return 1, len(compressible_blocks(shape.num_layers))


def _knob_compression(knob: int, shape: ModelShape, **options) -> dict:
    no_options(SPEC.name, options)
    return dict(method=SPEC.name,
                layers=list(knob_layers(knob, shape.num_layers)))


def _knob_text(knob: int, shape: ModelShape) -> str:
    return 'before blocks ' + ', '.join(
        str(i) for i in knob_layers(knob, shape.num_layers))


SPEC = MethodSpec(
    name=MPM.method, label='MPM',
    knob=('the schedule: a first insertion before block L - knob and a '
          'second 3 blocks later where it fits (the authors\' (2, 5) at 12 '
          'blocks is knob 10); its GFLOPs are discrete, one value per '
          'schedule'),
    knob_range=_knob_range, knob_compression=_knob_compression,
    knob_text=_knob_text, fixed_shapes=False, per_image_merges=True,
    exports=False,
    no_export=("each image keeps its own number of tokens, so the blocks' "
               'shapes depend on the input'),
    marker='P', discrete=True,
    picture_note=SOURCE_MAP_NOTE,
    config=MPMConfig)
register(SPEC)
