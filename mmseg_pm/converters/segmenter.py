"""Checkpoints of the original Segmenter code (rstrudel/segmenter) and of
the authors' Prune-and-Merge code built on it -> this project's names.

* ``encoder.*`` is a timm-style ViT: converted by :mod:`.timm_vit` and
  prefixed ``backbone.``. Segmenter's encoder LayerNorms use torch's default
  eps 1e-5 (timm's own ViTs use 1e-6).
* ``decoder.*`` is the mask transformer (or the linear decoder): renamed to
  mmseg's ``SegmenterMaskTransformerHead`` (or an ``FCNHead`` with
  ``num_convs=0``) under ``decode_head.``. Segmenter multiplies
  ``x @ proj_patch``; mmseg's ``patch_proj`` is an ``nn.Linear`` computing
  ``x @ W.T``, hence the transposes.
* Prune-and-Merge blocks carry dense matrices (names in
  :data:`PM_MATRIX_KEYS`, one place to change them): a merge matrix M
  (K+1 x N+1, row/column 0 = class token), a reconstruct matrix R
  (N+1 x K+1) and a token mask (N+1, 1 = kept, 0 = pruned). They become
  this project's ``token_compressors.{first block}`` buffers: the window of
  a token is the row of its one non-zero in M, the centre of a window its
  token with weight 1 (else its largest weight), the merge weights M's
  non-zeros and the reconstruct weights R's. A merge in one block is a
  'layer' unit; a merge in block m whose reconstruct matrix sits in a later
  block r is a span (m, r).
"""
from __future__ import annotations

import math
import re
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from mmseg_pm.compression.reducer import STRUCTURES_NAME
from mmseg_pm.compression.structure import (CompressionStructure,
                                            reconstruct_weights)

from .timm_vit import (_BLOCK, TIMM_BLOCK_KEYS, ConversionError, _short,
                       convert_timm_vit)

# What the authors' Prune-and-Merge code calls its per-block matrices,
# relative to ``encoder.blocks.{i}.``. Change here if a checkpoint differs.
PM_MATRIX_KEYS = dict(
    merge='merge_matrix',              # (K+1, N+1), class token at [0, 0]
    reconstruct='reconstruct_matrix',  # (N+1, K+1)
    token_mask='token_mask',           # (N+1,), 1 = kept, 0 = pruned
)

# Segmenter mask transformer key -> mmseg SegmenterMaskTransformerHead key
MASK_DECODER_KEYS = {
    'proj_dec.weight': 'dec_proj.weight',
    'proj_dec.bias': 'dec_proj.bias',
    'cls_emb': 'cls_emb',
    'decoder_norm.weight': 'decoder_norm.weight',
    'decoder_norm.bias': 'decoder_norm.bias',
    'mask_norm.weight': 'mask_norm.weight',
    'mask_norm.bias': 'mask_norm.bias',
}
# (N, C) @ P parameters that become nn.Linear weights P.T
MASK_DECODER_TRANSPOSED = {
    'proj_patch': 'patch_proj.weight',
    'proj_classes': 'classes_proj.weight',
}
# Segmenter's linear decoder -> FCNHead(num_convs=0)'s 1x1 classifier
LINEAR_DECODER_KEYS = {
    'head.weight': 'conv_seg.weight',
    'head.bias': 'conv_seg.bias',
}

ENCODER = 'encoder.'
DECODER = 'decoder.'
_PM_KEY = re.compile(r'^blocks\.(\d+)\.(\w+)$')
CLASS_TOKEN_TOLERANCE = 1e-6


# ---------------------------------------------------------------------------
# Prune-and-Merge matrices -> structures
def _where(key: str) -> str:
    return f' ({key})' if key else ''


def structure_from_matrices(merge: Tensor,
                            reconstruct: Optional[Tensor],
                            token_mask: Optional[Tensor],
                            grid: Tuple[int, int],
                            name: str = ''
                            ) -> Tuple[CompressionStructure, Tensor]:
    """One unit's structure and reconstruct weights from the authors'
    dense matrices.

    Args:
        merge: (K+1, N+1) merge matrix; row and column 0 are the class
            token, which must map to itself with weight 1.
        reconstruct: (N+1, K+1) reconstruct matrix; its non-zeros must lie
            on the transposed support of ``merge``. None: use the
            pseudo-inverse of ``merge`` (what an untrained model starts from).
        token_mask: (N+1,) 1 for kept, 0 for pruned tokens; None: tokens
            whose merge column is zero are pruned.
        grid: (H, W) patch grid, H * W = N.
        name: where the matrices come from, for error messages.

    Returns:
        (structure, reconstruct_weight (N,)).
    """
    h, w = int(grid[0]), int(grid[1])
    n = h * w
    where = _where(name)
    merge = merge.detach().double().cpu()
    if merge.ndim != 2 or merge.shape[1] != n + 1 or merge.shape[0] < 2:
        raise ConversionError(
            f'merge matrix{where} has shape {tuple(merge.shape)}; expected '
            f'(K+1, {n + 1}) for a {h}x{w} grid plus the class token')
    k = merge.shape[0] - 1
    if reconstruct is not None:
        reconstruct = reconstruct.detach().double().cpu()
        if tuple(reconstruct.shape) != (n + 1, k + 1):
            raise ConversionError(
                f'reconstruct matrix{where} has shape '
                f'{tuple(reconstruct.shape)}; expected ({n + 1}, {k + 1}), '
                'the transposed shape of its merge matrix')
    for label, mat in (('merge', merge), ('reconstruct', reconstruct)):
        if mat is None:
            continue
        if not torch.isfinite(mat).all():
            raise ConversionError(f'{label} matrix{where} is not finite')
        if abs(float(mat[0, 0]) - 1) > CLASS_TOKEN_TOLERANCE or \
                mat[0, 1:].any() or mat[1:, 0].any():
            raise ConversionError(
                f'{label} matrix{where}: the class token (row and column 0) '
                'must pass through unchanged (1 at [0, 0], zeros elsewhere '
                'in its row and column); this model never merges or scales '
                'the class token')

    patch = merge[1:, 1:]  # (K, N)
    nonzeros = (patch != 0).sum(dim=0)
    if token_mask is not None:
        token_mask = token_mask.detach().flatten().cpu()
        if token_mask.numel() != n + 1:
            raise ConversionError(
                f'token mask{where} has {token_mask.numel()} entries; '
                f'expected {n + 1} (class token + {h}x{w} patches)')
        if not bool(((token_mask == 0) | (token_mask == 1)).all()):
            raise ConversionError(f'token mask{where} must hold only 0 '
                                  '(pruned) and 1 (kept)')
        if token_mask[0] != 1:
            raise ConversionError(f'token mask{where} prunes the class token')
        kept = token_mask[1:] == 1
    else:
        kept = nonzeros > 0
    bad = torch.nonzero(kept & (nonzeros != 1)).flatten().tolist()
    if bad:
        raise ConversionError(
            f'merge matrix{where} is not a Prune-and-Merge merge: patch '
            f'tokens {bad[:10]} have {nonzeros[bad[:10]].tolist()} non-zeros '
            'in their columns, but every kept token belongs to exactly one '
            'window (one non-zero per column); soft or overlapping merges '
            'cannot be represented')
    bad = torch.nonzero(~kept & (nonzeros != 0)).flatten().tolist()
    if bad:
        raise ConversionError(
            f'merge matrix{where}: patch tokens {bad[:10]} are pruned by the '
            'token mask but have non-zero merge weights')
    row = patch.abs().argmax(dim=0)  # window of each kept token
    rows_used = torch.bincount(row[kept], minlength=k)
    if (rows_used == 0).any():
        empty = torch.nonzero(rows_used == 0).flatten().tolist()
        raise ConversionError(f'merge matrix{where}: rows {empty[:10]} '
                              '(windows) merge no token')
    cols = torch.arange(n)
    weight = torch.where(kept, patch[row, cols], torch.zeros(n,
                                                             dtype=patch.dtype))

    # centre of each window: its token with weight 1, else its largest
    centre_of_row = torch.empty(k, dtype=torch.long)
    for r in range(k):
        members = torch.nonzero(kept & (row == r)).flatten()
        ones = members[(weight[members] - 1).abs() <= CLASS_TOKEN_TOLERANCE]
        centre_of_row[r] = ones[0] if ones.numel() else \
            members[weight[members].argmax()]
    order = torch.argsort(centre_of_row)  # windows in raster order of centres
    rank = torch.empty(k, dtype=torch.long)
    rank[order] = torch.arange(k)
    group = torch.where(kept, rank[row], torch.full((n, ), -1))
    structure = CompressionStructure((h, w), group, centre_of_row[order],
                                     weight.float())

    if reconstruct is None:
        return structure, reconstruct_weights(structure.group,
                                              structure.weight,
                                              structure.num_groups)
    rec = reconstruct[1:, 1:]  # (N, K)
    support = torch.zeros_like(rec, dtype=torch.bool)
    support[cols[kept], row[kept]] = True
    outside = torch.nonzero((rec != 0) & ~support)
    if outside.numel():
        tokens = sorted(set(outside[:, 0].tolist()))
        raise ConversionError(
            f'reconstruct matrix{where}: patch tokens {tokens[:10]} are '
            'reconstructed from windows they were not merged into (or are '
            'pruned); R must have its non-zeros where M.T has them')
    reconstruct_weight = torch.where(kept, rec[cols, row],
                                     torch.zeros(n, dtype=rec.dtype))
    return structure, reconstruct_weight.float()


def compressor_state(structure: CompressionStructure,
                     reconstruct_weight: Tensor) -> Dict[str, Tensor]:
    """The state-dict entries of a ``TokenCompressor`` holding a unit."""
    is_centre = torch.zeros(structure.num_tokens, dtype=torch.bool)
    is_centre[structure.centre] = True
    return {
        'grid': torch.tensor(structure.grid, dtype=torch.long),
        'group': structure.group.clone(),
        'is_centre': is_centre,
        'merge_weight': structure.weight.clone(),
        'reconstruct_weight': reconstruct_weight.float().clone(),
        'residual': torch.tensor(False),  # the authors' pinv reconstruction
    }


def pm_units(encoder: Dict[str, Tensor], keys: Dict[str, str] = PM_MATRIX_KEYS
             ) -> List[Tuple[int, Optional[int]]]:
    """(first, last) block of every compressed unit in an encoder state dict
    (keys relative to ``encoder.``): a merge opens a unit, a reconstruct in
    the same or a later block (before the next merge) closes it; ``last``
    is None when none does."""
    def blocks_with(name):
        return sorted(int(m.group(1)) for m in map(_PM_KEY.match, encoder)
                      if m and m.group(2) == name)

    merges, recs = blocks_with(keys['merge']), blocks_with(keys['reconstruct'])
    units, claimed = [], set()
    for i, first in enumerate(merges):
        nxt = merges[i + 1] if i + 1 < len(merges) else math.inf
        ends = [r for r in recs if first <= r < nxt]
        if len(ends) > 1:
            raise ConversionError(
                f'the merge of block {first} is reconstructed twice (blocks '
                f'{ends}); expected one {keys["reconstruct"]} per merge')
        units.append((first, ends[0] if ends else None))
        claimed.update(ends)
    orphans = sorted(set(recs) - claimed)
    if orphans:
        raise ConversionError(
            f'encoder.blocks.{orphans[0]}.{keys["reconstruct"]} '
            'reconstructs, but no earlier block merges')
    return units


def convert_pm_matrices(encoder: Dict[str, Tensor],
                        grid: Tuple[int, int],
                        keys: Dict[str, str] = PM_MATRIX_KEYS,
                        derive_reconstruct: bool = False
                        ) -> Tuple[Dict[str, Tensor], List[Tuple[int, int]],
                                   List[str]]:
    """Remove the Prune-and-Merge matrices from ``encoder`` (in place) and
    return the ``token_compressors.*`` entries, the units and notes.

    A merge without a reconstruct matrix (the released span mode never set
    it) is refused unless ``derive_reconstruct``: the unit is then that one
    block, reconstructed with the pseudo-inverse of its merge matrix.
    """
    state, units, notes = {}, [], []
    for first, last in pm_units(encoder, keys):
        merge_key = f'blocks.{first}.{keys["merge"]}'
        if last is None:
            if not derive_reconstruct:
                raise ConversionError(
                    f'encoder.{merge_key} has no {keys["reconstruct"]} in '
                    'this or a later block (before the next merge); pass '
                    '--derive-reconstruct to reconstruct that block with the '
                    'pseudo-inverse of its merge matrix')
            notes.append(f'block {first}: no reconstruct matrix, using the '
                         'pseudo-inverse of the merge matrix')
            last, reconstruct = first, None
        else:
            reconstruct = encoder[f'blocks.{last}.{keys["reconstruct"]}']
        masks = [encoder.get(f'blocks.{b}.{keys["token_mask"]}')
                 for b in sorted({first, last})]
        masks = [m for m in masks if m is not None]
        if len(masks) == 2 and not torch.equal(masks[0], masks[1]):
            raise ConversionError(
                f'the token masks of blocks {first} and {last} differ; a '
                'unit has one set of pruned tokens')
        structure, rec = structure_from_matrices(
            encoder[merge_key], reconstruct, masks[0] if masks else None,
            grid, f'encoder.{merge_key}')
        for k, v in compressor_state(structure, rec).items():
            state[f'{STRUCTURES_NAME}.{first}.{k}'] = v
        units.append((first, last))
        notes.append(f'blocks {first}..{last}: {structure.summary()}')
    for key in [k for k in encoder if (m := _PM_KEY.match(k))
                and m.group(2) in keys.values()]:
        del encoder[key]
    return state, units, notes


def compression_config(units: Sequence[Tuple[int, int]]) -> Optional[dict]:
    """The backbone ``compression=`` a model needs to load these units
    (the authors' matrices are M and pinv(M) over fixed windows:
    ``reconstruct='pinv'``, ``assign='static'``, not the default
    content-aware windows)."""
    if not units:
        return None
    authors = dict(reconstruct='pinv', assign='static')
    if all(a == b for a, b in units):
        return dict(mode='layer', layers=[a for a, _ in units], **authors)
    return dict(mode='span', spans=[(a, b) for a, b in units], **authors)


def infer_grid(pos_embed: Tensor, num_prefix_tokens: int = 1
               ) -> Tuple[int, int]:
    """Square grid of a position embedding (the authors assume square)."""
    n = pos_embed.shape[1] - num_prefix_tokens
    side = math.isqrt(n)
    if side * side != n:
        raise ConversionError(
            f'pos_embed holds {n} patch positions, not a square grid; pass '
            'the grid with --grid H W')
    return side, side


# ---------------------------------------------------------------------------
# whole Segmenter checkpoints
def convert_decoder(decoder: Dict[str, Tensor]
                    ) -> Tuple[Dict[str, Tensor], str]:
    """Segmenter decoder keys (relative to ``decoder.``) -> mmseg head keys
    (relative to ``decode_head.``) and the head's kind."""
    if set(decoder) <= set(LINEAR_DECODER_KEYS):
        if 'head.weight' not in decoder:
            raise ConversionError('linear decoder without decoder.head.weight')
        return {LINEAR_DECODER_KEYS[k]: (v[:, :, None, None] if v.ndim == 2
                                         else v)
                for k, v in decoder.items()}, 'linear'
    # the blocks are timm blocks: reuse the timm table for them
    blocks = {k: v for k, v in decoder.items() if k.startswith('blocks.')}
    others = {k: v for k, v in decoder.items() if k not in blocks}
    unknown = sorted(set(others) - set(MASK_DECODER_KEYS) -
                     set(MASK_DECODER_TRANSPOSED))
    if unknown:
        raise ConversionError('unrecognised Segmenter decoder keys: '
                              + _short(['decoder.' + k for k in unknown]))
    missing = sorted(set(MASK_DECODER_KEYS) | set(MASK_DECODER_TRANSPOSED))
    missing = [k for k in missing if k not in others]
    if missing:
        raise ConversionError('the mask transformer decoder lacks '
                              + _short(['decoder.' + k for k in missing]))
    head = {}
    for key, value in blocks.items():
        m = _BLOCK.match(key)
        if not m or m.group(2) not in TIMM_BLOCK_KEYS:
            raise ConversionError(f'unrecognised Segmenter decoder key: '
                                  f'decoder.{key}')
        head[f'layers.{m.group(1)}.{TIMM_BLOCK_KEYS[m.group(2)]}'] = value
    for key, value in others.items():
        if key in MASK_DECODER_TRANSPOSED:
            head[MASK_DECODER_TRANSPOSED[key]] = value.t()
        else:
            head[MASK_DECODER_KEYS[key]] = value
    return head, 'mask'


def convert_segmenter(state_dict: Dict[str, Tensor],
                      grid: Optional[Tuple[int, int]] = None,
                      keys: Dict[str, str] = PM_MATRIX_KEYS,
                      derive_reconstruct: bool = False,
                      drop_dist_token: bool = False) -> Tuple[
                          Dict[str, Tensor], Optional[dict], List[str]]:
    """A Segmenter (optionally Prune-and-Merge) state dict -> mmseg keys.

    Returns ``(state_dict, compression, notes)``: the converted weights
    (``backbone.*``, ``decode_head.*``), the backbone ``compression=`` the
    config needs to load them (None if dense) and notes for the user.
    ``grid`` is the (H, W) patch grid of the matrices, by default the square
    grid of the position embedding.
    """
    unknown = [k for k in state_dict if not k.startswith((ENCODER, DECODER))]
    if unknown:
        raise ConversionError(
            f'unrecognised keys (a Segmenter checkpoint has only encoder.* '
            f'and decoder.*): {_short(unknown)}')
    encoder = {k[len(ENCODER):]: v for k, v in state_dict.items()
               if k.startswith(ENCODER)}
    decoder = {k[len(DECODER):]: v for k, v in state_dict.items()
               if k.startswith(DECODER)}
    if not encoder:
        raise ConversionError('no encoder.* weights: not a Segmenter '
                              'checkpoint')
    notes = []
    if grid is None and 'pos_embed' in encoder:
        prefix = 2 if 'dist_token' in encoder else 1
        has_pm = any((m := _PM_KEY.match(k)) and m.group(2) in keys.values()
                     for k in encoder)
        if has_pm:
            grid = infer_grid(encoder['pos_embed'], prefix)
    pm_state, units, pm_notes = convert_pm_matrices(
        encoder, grid or (0, 0), keys, derive_reconstruct)
    # Segmenter's encoder LayerNorms are torch's default (eps 1e-5)
    backbone, timm_notes = convert_timm_vit(encoder, drop_dist_token,
                                            layer_norm_eps=1e-5)
    notes += timm_notes + pm_notes
    converted = {f'backbone.{k}': v for k, v in backbone.items()}
    converted.update({f'backbone.{k}': v for k, v in pm_state.items()})
    if decoder:
        head, kind = convert_decoder(decoder)
        converted.update({f'decode_head.{k}': v for k, v in head.items()})
        if kind == 'linear':
            notes.append("linear decoder: use decode_head=dict(type='FCNHead'"
                         ', num_convs=0, concat_input=False, ...) as '
                         "mmseg's segmenter_vit-s_fcn config does")
        else:
            num = 1 + max([int(k.split('.')[1]) for k in head
                           if k.startswith('layers.')], default=-1)
            notes.append(f'mask transformer: num_layers={num}, '
                         f'num_classes={head["cls_emb"].shape[1]}, '
                         f'embed_dims={head["cls_emb"].shape[2]}')
    else:
        notes.append('no decoder.* weights: converted the encoder only')
    compression = compression_config(units)
    if compression is not None:
        notes.append(f'backbone compression={compression} (the structures '
                     f'are for a {grid[0]}x{grid[1]} grid: img_size = grid x '
                     'patch_size)')
    return converted, compression, notes
