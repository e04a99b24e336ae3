"""Adaptive Local-then-Global token Merging (ALGM; Norouzi et al., CVPR
2024) inside the backbone, training-free or trained.

Two merges, both between a block's attention and its MLP (as in ToMe), on
the block's tokens after the attention residual (the authors' similarity
metric: the features themselves, not the keys):

* local (their CLAP, at one early block, the authors' "layer 1" = block 0):
  the patch grid is cut into non-overlapping ``window`` cells (2x2); a
  cell whose mean pairwise cosine similarity, self-pairs excluded, is
  >= ``threshold`` becomes one token, the size-weighted mean of its
  members. Tokens outside full cells (an odd edge) never merge.
* global (their GBM, at one later block, "layer 5" = block 4 for ViT-T/S/B):
  ToMe's bipartite matching (tome.py) where every A token whose best edge
  scores >= mean + std / layer of the best edges of its image merges
  (``layer`` counted from 1, the class token left out of the statistics).

Token order after the local merge is the authors': class token, merged
cells by descending similarity (ties: raster order), then the unmerged
tokens in raster order; the global merge's even/odd split depends on it.

The authors merge the MINIMUM count over the batch (an image's result then
depends on the other images of its batch). Here every image merges its own
count: the batch is padded to its largest image and padded keys are masked
out of every later attention through the block's attention bias (-inf), so
an image gives the same result in any batch. The authors pass the token
sizes to their attention but do not use them; proportional attention
(``log size`` bias, ToMe's) is an option here, off by default.

The source map (tome.py) gives the full grid back at any depth.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from mmseg_pm.utils.errors import UsageError

from .config import (block_index, check_flag, check_keys, check_number,
                     check_within_grid, is_int)
from .ops import cosine_similarity, initial_source, merge_tokens, padding_bias
from .reducer import SourceMapReducer
from .registry import (SOURCE_MAP_NOTE, MethodSpec, ModelShape,
                       compressible_blocks, no_options, register)
from .tome import bipartite_assign, bipartite_scores


# ---------------------------------------------------------------- local
def grid_windows(hw: Tuple[int, int], window: Tuple[int, int],
                 device=None) -> Tensor:
    """(num_windows, wh * ww) raster indices of the patch tokens of every
    full non-overlapping window of an H x W grid, windows in raster order,
    members in raster order within their window."""
    (h, w), (wh, ww) = hw, window
    rows, cols = h // wh, w // ww
    grid = torch.arange(h * w, device=device).view(h, w)
    cells = grid[:rows * wh, :cols * ww].reshape(rows, wh, cols, ww)
    return cells.permute(0, 2, 1, 3).reshape(rows * cols, wh * ww)


def window_similarity(patches: Tensor, windows: Tensor) -> Tensor:
    """Mean pairwise cosine similarity of the members of every window,
    self-pairs excluded: (B, N, C) patch tokens -> (B, num_windows), fp32."""
    members = patches[:, windows]  # (B, W, k, C)
    gram = cosine_similarity(members, members)  # (B, W, k, k)
    k = windows.shape[1]
    off_diagonal = gram.sum(dim=(-2, -1)) - gram.diagonal(
        dim1=-2, dim2=-1).sum(dim=-1)
    return off_diagonal / (k * (k - 1))


def local_merge_assign(similarity: Tensor, windows: Tensor, threshold: float,
                       num_patches: int, prefix: int
                       ) -> Tuple[Tensor, Tensor]:
    """The slot of every token (prefix tokens included) after merging each
    window whose ``similarity`` (B, W) is >= ``threshold``.

    Slots: prefix tokens alone, then the merged windows by descending
    similarity (ties: window order), then the other tokens in raster order.
    Returns (assign (B, prefix + N), slots per image (B,)).
    """
    b, num_windows = similarity.shape
    k = windows.shape[1]
    device = similarity.device
    with torch.no_grad():
        merged = similarity >= threshold  # (B, W)
        r = merged.sum(dim=1)
        order = similarity.masked_fill(~merged, -torch.inf).argsort(
            dim=1, descending=True, stable=True)
        rank = torch.empty_like(order).scatter_(
            1, order, torch.arange(num_windows, device=device).expand(b, -1))
        # window of every patch token (num_windows: outside full windows)
        token_window = torch.full((num_patches, ), num_windows,
                                  device=device)
        token_window[windows.flatten()] = torch.arange(
            num_windows, device=device).repeat_interleave(k)
        padded = torch.cat((merged, merged.new_zeros(b, 1)), dim=1)
        in_merged = padded[:, token_window]  # (B, N)
        window_slot = torch.cat((rank, rank.new_zeros(b, 1)), dim=1)[
            :, token_window]
        alone_slot = r[:, None] + (~in_merged).long().cumsum(dim=1) - 1
        patch_slot = prefix + torch.where(in_merged, window_slot, alone_slot)
        assign = torch.cat((torch.arange(prefix, device=device).expand(
            b, -1), patch_slot), dim=1)
    return assign, prefix + num_patches - (k - 1) * r


# ---------------------------------------------------------------- global
def adaptive_merge_count(best: Tensor, edges: Tensor, layer: int) -> Tensor:
    """Per image, the A tokens whose best edge is >= mean + std / ``layer``
    of its best edges: ``best`` (B, |A|), ``edges`` (B, |A|) True where a
    token has an edge (not the class token, not padding). The std is the
    sample std (n - 1), as torch's default the authors use. Returns (B,)."""
    count = edges.sum(dim=1)
    values = torch.where(edges, best, 0.0)
    mean = values.sum(dim=1) / count
    deviation = torch.where(edges, best - mean[:, None], 0.0)
    std = (deviation.square().sum(dim=1) / (count - 1)).sqrt()
    threshold = mean + std / layer
    return (edges & (best >= threshold[:, None])).sum(dim=1)


def real_tokens(size: Optional[Tensor]) -> Optional[Tensor]:
    """(B, T) False at padding, which has size 0 (None: no sizes yet, no
    padding)."""
    return None if size is None else size > 0


class ALGMState(NamedTuple):
    source: Tensor  # (B, T0): current token of every original token
    size: Optional[Tensor]  # (B, T) original tokens per token, 0: padding
    hw: Tuple[int, int]


class ALGM(nn.Module, SourceMapReducer):
    """ALGM in the backbone: a local merge at ``local_layer`` and a global
    merge at ``global_layer`` (None: none), both 0-based block indices.
    No parameters.

    A :class:`TokenReducer` (the backbone drives it through that
    interface); with ``trace_counts`` set, :attr:`last_counts` says what
    each image of the last forward pass kept.
    """

    method = 'algm'

    def __init__(self, local_layer: int = 0, global_layer: Optional[int] = 4,
                 threshold: float = 0.88, window: Tuple[int, int] = (2, 2),
                 num_prefix: int = 1,
                 proportional_attention: bool = False):
        super().__init__()
        self.local_layer = local_layer
        self.global_layer = global_layer
        self.threshold = threshold
        self.window = tuple(window)
        self.num_prefix = num_prefix
        self.proportional_attention = proportional_attention

    def start(self, x: Tensor, hw: Tuple[int, int]) -> ALGMState:
        return ALGMState(initial_source(x), None, tuple(hw))

    def attention_bias(self, size: Optional[Tensor]) -> Optional[Tensor]:
        """(B, 1, 1, T): padded keys -inf; with proportional attention the
        log sizes (log 0 = -inf covers the padding)."""
        if size is None:
            return None
        if self.proportional_attention:
            return size.log()[:, None, None, :]
        if bool((size > 0).all()):
            return None
        return padding_bias(size > 0, size.dtype)

    def run_block(self, i: int, layer: nn.Module, x: Tensor,
                  state: ALGMState) -> Tuple[Tensor, ALGMState]:
        """Block ``i`` on ``x`` (merging at the two blocks)."""
        bias = self.attention_bias(state.size)
        merges = i in (self.local_layer, self.global_layer)
        if not merges:
            self.record_source(i, state.source)
            out = layer(x, bias)
            self.record_counts(i, out, real_tokens(state.size))
            return out, state
        x, _, _ = layer.attention_residual(x, bias)
        size = state.size if state.size is not None else x.new_ones(
            x.shape[:2])
        if i == self.local_layer:
            assign, slots = self.local_assign(x, state.hw)
            num_slots = int(slots.max())
        else:
            assign, slots = self.global_assign(x, size > 0, i + 1)
            num_slots = int(slots.max()) + 1  # and one for the padding
        x, size = merge_tokens(x, assign, size, num_slots)
        x, size = x[:, :int(slots.max())], size[:, :int(slots.max())]
        source = assign.gather(1, state.source)
        self.record_source(i, source)
        state = state._replace(source=source, size=size)
        out = layer.mlp_residual(x)
        self.record_counts(i, out, real_tokens(size))
        return out, state

    def local_assign(self, x: Tensor, hw: Tuple[int, int]
                     ) -> Tuple[Tensor, Tensor]:
        prefix = self.num_prefix
        num_patches = x.shape[1] - prefix
        if num_patches != hw[0] * hw[1]:
            raise ValueError(
                f'ALGM local merge at block {self.local_layer} needs the full '
                f'{hw[0]}x{hw[1]} grid but the block has {num_patches} patch '
                'tokens; put the local merge before the global one')
        windows = grid_windows(hw, self.window, x.device)
        similarity = window_similarity(x[:, prefix:], windows)
        return local_merge_assign(similarity, windows, self.threshold,
                                  num_patches, prefix)

    def global_assign(self, x: Tensor, valid: Tensor, layer: int
                      ) -> Tuple[Tensor, Tensor]:
        best, match = bipartite_scores(x, self.num_prefix, valid)
        edges = torch.isfinite(best)
        r = adaptive_merge_count(best, edges, layer)
        return bipartite_assign(best, match, r, valid.sum(dim=1), x.shape[1])

    # ------------------------------------------------------------ questions
    def merging_blocks(self) -> List[int]:
        return [i for i in (self.local_layer, self.global_layer)
                if i is not None]

    def blocks(self, num_layers: int) -> List[int]:
        return list(range(self.local_layer, num_layers))

    def extra_repr(self) -> str:
        return (f'local_layer={self.local_layer}, '
                f'global_layer={self.global_layer}, '
                f'threshold={self.threshold}, window={self.window}, '
                f'proportional_attention={self.proportional_attention}')


@dataclass(frozen=True)
class ALGMConfig:
    """Adaptive Local-then-Global Merging (``method='algm'``; algm.py).

    ``local_layer``: the block (0-based, like every ``layers`` key here;
    the authors' "layer 1" is block 0) that merges each ``window`` cell of
    the grid whose mean pairwise cosine similarity is >= ``threshold``.
    ``global_layer``: the later block (authors' "layer 5" = block 4 for
    ViT-T/S/B, "layer 7" = block 6 for ViT-L; None: no global merge) whose
    bipartite matching merges every token scoring >= mean + std / layer.
    ``proportional_attention``: the log-size attention bias (off: the
    authors' attention ignores sizes).
    """

    method: ClassVar[str]  # set by register()
    local_layer: int = 0
    global_layer: Optional[int] = 4
    threshold: float = 0.88
    window: Tuple[int, int] = (2, 2)
    proportional_attention: bool = False

    @classmethod
    def from_dict(cls, cfg: dict, num_layers: int) -> 'ALGMConfig':
        cfg = dict(cfg)
        check_keys(cfg, {'method', 'local_layer', 'global_layer',
                          'threshold', 'window', 'proportional_attention'},
                    'algm')
        local = block_index(cfg.get('local_layer', 0), 'local_layer')
        glob = cfg.get('global_layer', 4)
        if glob is not None:
            glob = block_index(glob, 'global_layer')
        for name, block in (('local_layer', local), ('global_layer', glob)):
            if block is not None and not 0 <= block < num_layers:
                raise UsageError(f'{name}={block} is outside blocks '
                                 f'0..{num_layers - 1}')
        if glob is not None and glob <= local:
            raise UsageError(
                f'global_layer={glob} must come after local_layer={local}: '
                'the local merge cuts the full token grid into windows')
        threshold = check_number(cfg.get('threshold', 0.88), 'threshold')
        if not -1 <= threshold <= 1:
            raise UsageError(
                f'threshold must be in [-1, 1], got {threshold}: it is '
                "compared with a window's mean cosine similarity, which lies "
                'there (at -1 every window merges, above 1 none would)')
        window = cfg.get('window', (2, 2))
        if is_int(window):
            window = (window, window)
        if not isinstance(window, (list, tuple)) or len(window) != 2 or \
                not all(is_int(w) and w >= 1 for w in window) or \
                window[0] * window[1] < 2:
            raise UsageError('window must be a positive int or an (h, w) '
                             'pair of them covering at least 2 tokens, got '
                             f'{window!r}')
        prop = check_flag(cfg.get('proportional_attention', False),
                           'proportional_attention')
        return cls(local_layer=local, global_layer=glob, threshold=threshold,
                   window=(int(window[0]), int(window[1])),
                   proportional_attention=prop)

    def build_reducer(self, grid: Tuple[int, int], embed_dims: int,
                      num_prefix: int, img_size) -> ALGM:
        check_within_grid('window', self.window, grid, img_size,
                           'no window fits, so no token would merge '
                           "locally", "(the authors' window is (2, 2))")
        return ALGM(self.local_layer, self.global_layer, self.threshold,
                    self.window, num_prefix, self.proportional_attention)


# ---------------------------------------------------------------- knob
def algm_layers(num_layers: int) -> Tuple[int, int]:
    """ALGM's local and global blocks (0-based): the first block, and the
    block at the relative depth of the authors' layer 5 of 12 (ViT-T/S/B),
    round(5 / 12 * L) counted from 1, at least block 1 (8 blocks: block 2,
    their layer 3)."""
    compressible_blocks(num_layers)
    return 0, max(1, round(5 * num_layers / 12) - 1)


def _knob_range(shape: ModelShape) -> Tuple[int, int]:
    # tau from -1 (every window merges) to 1 (only windows of parallel
    # tokens: in practice none); the config refuses a tau outside
    return -1000, 1000


def _knob_compression(knob: int, shape: ModelShape, **options) -> dict:
    no_options(SPEC.name, options)
    local, glob = algm_layers(shape.num_layers)
    return dict(method=SPEC.name, local_layer=local, global_layer=glob,
                threshold=knob / 1000, window=(2, 2))


def _knob_text(knob: int, shape: ModelShape) -> str:
    local, glob = algm_layers(shape.num_layers)
    return f'tau {knob / 1000:.3f}, blocks {local} and {glob}'


SPEC = MethodSpec(
    name=ALGM.method, label='ALGM',
    knob=('its local-merge threshold in thousandths, tau = knob / 1000 (at '
          "24x24 tokens the study's model already merges 35 % of its GFLOPs "
          'away at tau 0.99, so hundredths cannot reach 70 %; a lower tau '
          'merges more windows, so its FLOPs rise with the knob)'),
    knob_range=_knob_range, knob_compression=_knob_compression,
    knob_text=_knob_text, fixed_shapes=False, per_image_merges=True,
    exports=False,
    no_export=("each image keeps its own number of tokens, so the blocks' "
               'shapes depend on the input'),
    marker='h',
    picture_note=SOURCE_MAP_NOTE,
    config=ALGMConfig)
register(SPEC)
