"""timm Vision Transformer weights -> mmseg ``VisionTransformer`` names.

``PMVisionTransformer`` uses mmseg's names, so the result initialises it
(and mmseg's own ``VisionTransformer``) through ``init_cfg=dict(
type='Pretrained', checkpoint=...)``. The mapping is a table per key; a
key that is neither mapped nor known to be droppable is refused, because a
silently ignored weight (layer scale, q/k norm, register tokens) would give
a different network.
"""
from __future__ import annotations

import math
import re
from typing import Dict, List, Tuple

from torch import Tensor

from mmseg_pm.utils.errors import UsageError

# timm key (outside the blocks) -> mmseg key
TIMM_TOP_KEYS = {
    'cls_token': 'cls_token',
    'pos_embed': 'pos_embed',
    'patch_embed.proj.weight': 'patch_embed.projection.weight',
    'patch_embed.proj.bias': 'patch_embed.projection.bias',
    'norm_pre.weight': 'ln_pre.weight',
    'norm_pre.bias': 'ln_pre.bias',
    'norm.weight': 'ln1.weight',
    'norm.bias': 'ln1.bias',
}
# timm key inside ``blocks.{i}.`` -> mmseg key inside ``layers.{i}.``; the
# fused qkv has the row layout of nn.MultiheadAttention's in_proj (q, k, v
# stacked, heads contiguous inside each), so it is copied as is.
TIMM_BLOCK_KEYS = {
    'norm1.weight': 'ln1.weight',
    'norm1.bias': 'ln1.bias',
    'attn.qkv.weight': 'attn.attn.in_proj_weight',
    'attn.qkv.bias': 'attn.attn.in_proj_bias',
    'attn.proj.weight': 'attn.attn.out_proj.weight',
    'attn.proj.bias': 'attn.attn.out_proj.bias',
    'norm2.weight': 'ln2.weight',
    'norm2.bias': 'ln2.bias',
    'mlp.fc1.weight': 'ffn.layers.0.0.weight',
    'mlp.fc1.bias': 'ffn.layers.0.0.bias',
    'mlp.fc2.weight': 'ffn.layers.1.weight',
    'mlp.fc2.bias': 'ffn.layers.1.bias',
}
# every block must have these (the biases of qkv/proj/fc are optional)
REQUIRED_BLOCK_KEYS = ('norm1.weight', 'attn.qkv.weight', 'attn.proj.weight',
                       'norm2.weight', 'mlp.fc1.weight', 'mlp.fc2.weight')
REQUIRED_TOP_KEYS = ('cls_token', 'pos_embed', 'patch_embed.proj.weight')
# classification heads: not part of a segmentation backbone
HEAD_PREFIXES = ('head.', 'head_dist.', 'fc_norm.', 'pre_logits.')
DIST_TOKEN = 'dist_token'

_BLOCK = re.compile(r'^blocks\.(\d+)\.(.+)$')


class ConversionError(UsageError):
    """The input is not a checkpoint this converter understands."""


def _short(keys, limit=8) -> str:
    keys = sorted(keys)
    more = f' (+{len(keys) - limit} more)' if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


def map_timm_key(key: str) -> str | None:
    """mmseg name of a timm ViT key, None if the key is not a known one."""
    if key in TIMM_TOP_KEYS:
        return TIMM_TOP_KEYS[key]
    match = _BLOCK.match(key)
    if match and match.group(2) in TIMM_BLOCK_KEYS:
        return f'layers.{match.group(1)}.{TIMM_BLOCK_KEYS[match.group(2)]}'
    return None


def block_indices(state_dict: Dict[str, Tensor]) -> List[int]:
    return sorted({int(m.group(1)) for m in map(_BLOCK.match, state_dict)
                   if m})


def check_not_other_format(state_dict: Dict[str, Tensor]) -> None:
    """Name the format of a checkpoint that is not timm's (one that needs
    no conversion, or another converter)."""
    keys = list(state_dict)
    if any(k.startswith(('backbone.', 'decode_head.')) or
           k.startswith('layers.0.attn.attn.') or
           k.startswith('patch_embed.projection.') for k in keys):
        raise ConversionError(
            'this is already an mmseg / mmseg_pm checkpoint (keys like '
            f'{_short(keys, 3)}): it needs no conversion; load it with '
            'load_from= (or a backbone init_cfg=dict(type=\'Pretrained\', '
            'checkpoint=..., prefix=\'backbone.\'))')
    if any(k.startswith(('encoder.blocks.', 'decoder.')) for k in keys):
        raise ConversionError(
            'this looks like a Segmenter (authors\' code) checkpoint (keys '
            f'like {_short(keys, 3)}); convert it with '
            'tools/model_converters/segmenter2mmseg_pm.py')


def convert_timm_vit(state_dict: Dict[str, Tensor],
                     drop_dist_token: bool = False,
                     layer_norm_eps: float = 1e-6
                     ) -> Tuple[Dict[str, Tensor], List[str]]:
    """Rename a timm ViT state dict to mmseg ``VisionTransformer`` keys.

    Returns the new state dict and notes for the user (dropped keys, model
    settings the weights need). Raises :class:`ConversionError` naming the
    missing or unrecognised keys.

    DeiT's distillation token has no counterpart in a segmentation ViT: it
    is refused unless ``drop_dist_token``, which removes it and its position
    embedding (the network then differs from the distilled classifier, whose
    patch tokens also attended to the distillation token).
    """
    notes: List[str] = []
    state_dict = dict(state_dict)
    dropped = sorted(k for k in state_dict if k.startswith(HEAD_PREFIXES))
    for key in dropped:
        del state_dict[key]
    if dropped:
        notes.append(f'dropped the classification head: {_short(dropped)}')

    num_prefix_tokens = 1
    if DIST_TOKEN in state_dict:
        if not drop_dist_token:
            raise ConversionError(
                'the checkpoint has a distillation token (dist_token: a DeiT '
                'distilled model); a segmentation ViT has only the class '
                'token. Pass --drop-dist-token to drop it and its position '
                'embedding (the patch tokens then no longer see it, so '
                'fine-tune), or start from a non-distilled checkpoint')
        del state_dict[DIST_TOKEN]
        num_prefix_tokens = 2
        notes.append('dropped dist_token and its position embedding')

    unknown = [k for k in state_dict if map_timm_key(k) is None]
    if unknown:
        check_not_other_format(state_dict)
        raise ConversionError(
            f'unrecognised timm ViT keys: {_short(unknown)}. These weights '
            '(e.g. layer scale ls1/ls2, q/k norms, register tokens, '
            'attention pooling) have no counterpart in mmseg\'s '
            'VisionTransformer; refusing to convert rather than drop them')
    blocks = block_indices(state_dict)
    missing = [k for k in REQUIRED_TOP_KEYS if k not in state_dict]
    if not blocks:
        missing.append('blocks.0.*')
    elif blocks != list(range(len(blocks))):
        gaps = sorted(set(range(blocks[-1] + 1)) - set(blocks))
        missing += [f'blocks.{i}.*' for i in gaps]
    for i in blocks:
        missing += [f'blocks.{i}.{s}' for s in REQUIRED_BLOCK_KEYS
                    if f'blocks.{i}.{s}' not in state_dict]
    if missing:
        raise ConversionError(
            f'not a complete timm ViT state dict; missing: {_short(missing)}')

    converted = {map_timm_key(k): v for k, v in state_dict.items()}
    pos = converted['pos_embed']
    if num_prefix_tokens == 2:
        pos = converted['pos_embed'] = pos[:, [0, *range(2, pos.shape[1])]]
    positions = pos.shape[1] - 1
    side = math.isqrt(positions)
    pos_grid = f'a {side}x{side} grid' if side * side == positions else \
        f'{positions} positions'
    if 'ln1.weight' not in converted:
        notes.append('no final norm (norm.*) in the checkpoint: use '
                     'final_norm=False')
    if 'patch_embed.projection.bias' in converted:
        notes.append('the patch embedding has a bias: set patch_bias=True in '
                     'the backbone config (mmseg\'s default is False and '
                     'would leave it out)')
    if 'ln_pre.weight' in converted:
        notes.append('the checkpoint has a pre-norm (norm_pre): set '
                     'pre_norm=True')
    if 'layers.0.attn.attn.in_proj_bias' not in converted:
        notes.append('no qkv bias in the checkpoint: set qkv_bias=False')
    c = converted['cls_token'].shape[-1]
    hidden = converted['layers.0.ffn.layers.0.0.weight'].shape[0]
    eps = f'{layer_norm_eps:g}'.replace('e-0', 'e-')
    patch = converted['patch_embed.projection.weight'].shape[-1]
    notes.append(f'architecture: embed_dims={c}, num_layers={len(blocks)}, '
                 f'patch_size={patch}, mlp_ratio={hidden / c:g}, pos_embed '
                 f'for {pos_grid} (resized to img_size on loading);'
                 f' LayerNorm eps {eps}: norm_cfg=dict(type=\'LN\', '
                 f'eps={eps})')
    return converted, notes
