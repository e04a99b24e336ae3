"""Prune-and-Merge Vision Transformer: Segmenter's ViT with token
compression inside the encoder and the full grid back at every output.

Drop-in for mmseg's ``VisionTransformer``: the same constructor arguments and
parameter names (mmseg's Segmenter checkpoints load as they are), and with
``compression=None`` the same function. Attention runs through
``scaled_dot_product_attention``; ``Attention.probs_hook`` switches one block
to an explicit softmax so a scoring pass can see (and differentiate through)
the attention probabilities.

``compression=dict(method=..., ...)`` hosts any other registered token
reducer instead (mmseg_pm/compression/registry.py): a reducer that merges
inside a block runs it in two halves (``attention_residual`` then
``mlp_residual``) and merges the tokens in between.
"""
from __future__ import annotations

import math
import numbers
import warnings
from contextlib import contextmanager
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmengine.model.weight_init import constant_init, kaiming_init, trunc_normal_
from mmengine.runner.checkpoint import CheckpointLoader, load_state_dict
from mmseg.models.utils import PatchEmbed, resize
from mmseg.registry import MODELS
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.utils import _pair

from mmseg_pm.utils.errors import (UsageAssertionError, UsageError,
                                   UsageTypeError)
from mmseg_pm.compression.config import build_reducer, parse_compression
from mmseg_pm.compression.reducer import (STRUCTURES_NAME, TokenReducer,
                                          methods_with_structures)
from mmseg_pm.compression.structure import CompressionStructure


def token_grid(size, patch_size: int, patch_pad) -> Tuple[int, int]:
    """The token grid of an input of ``size`` (H, W): 'corner'/'same'
    padding pads a partial patch up, a numeric padding drops it (as a
    convolution does)."""
    p = patch_size
    if isinstance(patch_pad, str):
        return (math.ceil(size[0] / p), math.ceil(size[1] / p))
    pad = _pair(patch_pad)
    return ((size[0] + 2 * pad[0] - p) // p + 1,
            (size[1] + 2 * pad[1] - p) // p + 1)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def image_size(img_size) -> Tuple[int, int]:
    """``img_size`` as (H, W): one int, or a tuple or list of one or two
    (mmseg asserts the length and fails with TypeError on other types)."""
    if _is_int(img_size):
        img_size = (img_size, )
    if not isinstance(img_size, (tuple, list)):
        raise UsageTypeError(f'img_size must be an int or an (H, W) tuple, '
                             f'got {img_size!r} ({type(img_size).__name__})')
    if len(img_size) not in (1, 2):
        raise UsageAssertionError(f'img_size must have 1 or 2 entries (H, '
                                  f'W), got {len(img_size)}: {img_size!r}')
    if not all(_is_int(s) and s >= 1 for s in img_size):
        raise UsageTypeError(f'img_size must hold positive integers, got '
                             f'{img_size!r}')
    return _pair(int(img_size[0])) if len(img_size) == 1 else \
        (int(img_size[0]), int(img_size[1]))


def check_pretrained(pretrained, init_cfg) -> None:
    """mmseg's rule, in its order: ``pretrained`` (a path, deprecated) and
    ``init_cfg`` exclude each other; ``pretrained`` is a str or None."""
    if init_cfg and pretrained:
        raise UsageAssertionError(
            'init_cfg and pretrained cannot be set at the same time; keep '
            "init_cfg=dict(type='Pretrained', checkpoint=PATH) alone")
    if pretrained is not None and not isinstance(pretrained, str):
        raise UsageTypeError(
            f'pretrained must be a checkpoint path (str) or None, got '
            f'{pretrained!r}; better: init_cfg=dict(type=\'Pretrained\', '
            'checkpoint=PATH)')


def block_indices(out_indices, num_layers: int) -> List[int]:
    """``out_indices`` (an int, -1 for the last block, or a list or tuple,
    negative entries counted from the end) as block indices."""
    if _is_int(out_indices):
        out_indices = [out_indices]
    elif not isinstance(out_indices, (list, tuple)):
        raise UsageTypeError(f'out_indices must be an int, list or tuple of '
                             f'block indices, got {out_indices!r}')
    return [num_layers + i if i < 0 else i for i in out_indices]


class DropPath(nn.Module):
    """Stochastic depth on the residual branch (per sample)."""

    def __init__(self, drop_prob: float = 0.):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0. or not self.training:
            return x
        keep = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0], ) + (1, ) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class QKVProjection(nn.Module):
    """Holds the projections under the names of ``nn.MultiheadAttention``
    (``in_proj_weight``, ``in_proj_bias``, ``out_proj``), which is what
    mmseg's checkpoints store them as."""

    def __init__(self, embed_dims: int, bias: bool = True):
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dims,
                                                       embed_dims))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dims)) \
            if bias else None
        self.out_proj = nn.Linear(embed_dims, embed_dims, bias=bias)
        nn.init.xavier_uniform_(self.in_proj_weight)


class Attention(nn.Module):
    """Multi-head self-attention with an optional explicit-softmax path.

    ``probs_hook``: when set, the block computes ``softmax(q k^T / sqrt(d))``
    explicitly and calls ``probs_hook(probs)`` with the (B, heads, T, T)
    tensor before using it (a scoring pass registers gradient hooks on it).
    Otherwise fused ``scaled_dot_product_attention`` is used.

    ``bias``: optional additive attention bias broadcastable to
    (B, heads, T, T), e.g. ToMe's log token sizes as (B, 1, 1, T).
    """

    def __init__(self, embed_dims: int, num_heads: int, attn_drop: float = 0.,
                 proj_drop: float = 0., qkv_bias: bool = True):
        super().__init__()
        if embed_dims % num_heads:  # torch's MultiheadAttention asserts
            raise UsageAssertionError(
                f'embed_dims={embed_dims} is not divisible by num_heads='
                f'{num_heads}; pick num_heads dividing embed_dims')
        self.num_heads = num_heads
        self.attn = QKVProjection(embed_dims, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)
        self.probs_hook: Optional[Callable[[Tensor], None]] = None

    def forward(self, x: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        return self.forward_qk(x, bias)[0]

    def forward_qk(self, x: Tensor, bias: Optional[Tensor] = None
                   ) -> Tuple[Tensor, Tensor, Tensor]:
        """The output and the (B, heads, T, d) queries and keys (token
        mergers rank and match tokens on them)."""
        b, t, c = x.shape
        qkv = F.linear(x, self.attn.in_proj_weight, self.attn.in_proj_bias)
        q, k, v = qkv.view(b, t, 3, self.num_heads,
                           c // self.num_heads).permute(2, 0, 3, 1, 4)
        drop = self.attn_drop if self.training else 0.
        if self.probs_hook is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                                 dropout_p=drop)
        else:
            scale = 1.0 / math.sqrt(q.shape[-1])
            logits = (q * scale) @ k.transpose(-2, -1)
            if bias is not None:
                logits = logits + bias
            probs = torch.softmax(logits, dim=-1)
            self.probs_hook(probs)
            out = F.dropout(probs, drop, self.training) @ v
        out = out.transpose(1, 2).reshape(b, t, c)
        return self.proj_drop(self.attn.out_proj(out)), q, k


class FFN(nn.Module):
    """MLP of ``num_fcs`` linear layers, laid out and named like mmcv's FFN
    (``layers.0.0`` ... ``layers.{num_fcs - 1}``), so its checkpoints
    load."""

    def __init__(self, embed_dims: int, hidden_dims: int, act_cfg: dict,
                 drop: float = 0., num_fcs: int = 2):
        super().__init__()
        if not _is_int(num_fcs) or num_fcs < 2:  # mmcv's FFN asserts
            raise UsageAssertionError(
                f'num_fcs must be an integer >= 2 (linear layers of each '
                f'MLP), got {num_fcs!r}')
        widths = [embed_dims] + [hidden_dims] * (num_fcs - 1)
        hidden = [nn.Sequential(nn.Linear(a, b),
                                build_activation_layer(act_cfg),
                                nn.Dropout(drop))
                  for a, b in zip(widths, widths[1:])]
        self.layers = nn.Sequential(*hidden, nn.Linear(hidden_dims,
                                                       embed_dims),
                                    nn.Dropout(drop))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class TransformerBlock(nn.Module):
    """Pre-norm ViT block, laid out as mmseg's TransformerEncoderLayer
    (stochastic depth on the FFN branch only, as there).

    ``attention_residual`` and ``mlp_residual`` are its two halves, for
    token mergers that change the tokens in between; ``attn_bias`` is added
    to the attention logits.
    """

    def __init__(self, embed_dims: int, num_heads: int, hidden_dims: int,
                 drop_rate: float = 0., attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0., qkv_bias: bool = True,
                 act_cfg: dict = dict(type='GELU'),
                 norm_cfg: dict = dict(type='LN'), with_cp: bool = False,
                 num_fcs: int = 2):
        super().__init__()
        self.ln1 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.attn = Attention(embed_dims, num_heads, attn_drop_rate,
                              drop_rate, qkv_bias)
        self.ln2 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.ffn = FFN(embed_dims, hidden_dims, act_cfg, drop_rate, num_fcs)
        self.drop_path = DropPath(drop_path_rate)
        self.with_cp = with_cp

    def _attention_residual(self, x: Tensor, attn_bias: Optional[Tensor]
                            ) -> Tuple[Tensor, Tensor, Tensor]:
        out, q, k = self.attn.forward_qk(self.ln1(x), attn_bias)
        return x + out, q, k

    def _mlp_residual(self, x: Tensor) -> Tensor:
        return x + self.drop_path(self.ffn(self.ln2(x)))

    def _forward(self, x: Tensor, attn_bias: Optional[Tensor]) -> Tensor:
        return self._mlp_residual(self._attention_residual(x, attn_bias)[0])

    def _run(self, fn, x: Tensor, *args):
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(fn, x, *args, use_reentrant=False)
        return fn(x, *args)

    def attention_residual(self, x: Tensor,
                           attn_bias: Optional[Tensor] = None
                           ) -> Tuple[Tensor, Tensor, Tensor]:
        """``x + attn(ln1(x))`` and the attention's queries and keys."""
        return self._run(self._attention_residual, x, attn_bias)

    def mlp_residual(self, x: Tensor) -> Tensor:
        """``x + ffn(ln2(x))``."""
        return self._run(self._mlp_residual, x)

    def forward(self, x: Tensor, attn_bias: Optional[Tensor] = None) -> Tensor:
        return self._run(self._forward, x, attn_bias)


@MODELS.register_module()
class PMVisionTransformer(BaseModule):
    """Vision Transformer with Prune-and-Merge token compression.

    Arguments are those of mmseg's ``VisionTransformer`` plus:

    Args:
        compression (dict | None): None for the dense model, else
            ``dict(mode='layer', layers=[...])`` or
            ``dict(mode='span', spans=[(first, last), ...])`` with optional
            keys (defaults first): ``keep_rate`` (0.7), ``prune_rate``
            (0.0), ``rule`` ('row' or 'nearest': the static windows),
            ``assign`` ('content': each image's tokens join the most
            similar centre among the windows of their ``neighbourhood`` x
            ``neighbourhood`` tokens; 'static': the rule's windows),
            ``neighbourhood`` (3, odd), ``reconstruct`` ('residual': each
            token keeps its value and gets its window's update; 'pinv':
            the authors' pseudo-inverse), ``proportional_attention``
            (False; True: log window sizes on the merged tokens' attention
            logits), ``impl`` ('sparse' or 'dense') and ``trainable``
            (True: merge/reconstruct weights are learnt). Until a
            structure is installed (``set_structures`` or a checkpoint),
            every unit uses centres on a regular lattice with
            ``keep_rate`` of the tokens and no pruning. The structures are
            built for the grid of ``img_size``. ``method=`` another
            registered method selects its reducer instead, with that
            method's keys (any input size); see each method's config
            class in its module of mmseg_pm/compression/.
    """

    def __init__(self,
                 img_size=224,
                 patch_size=16,
                 patch_pad='corner',
                 in_channels=3,
                 embed_dims=768,
                 num_layers=12,
                 num_heads=12,
                 mlp_ratio=4,
                 out_origin=False,
                 out_indices=-1,
                 qkv_bias=True,
                 drop_rate=0.,
                 attn_drop_rate=0.,
                 drop_path_rate=0.,
                 with_cls_token=True,
                 output_cls_token=False,
                 norm_cfg=dict(type='LN'),
                 act_cfg=dict(type='GELU'),
                 patch_norm=False,
                 patch_bias=False,
                 pre_norm=False,
                 final_norm=False,
                 interpolate_mode='bicubic',
                 num_fcs=2,
                 norm_eval=False,
                 with_cp=False,
                 frozen_exclude=['all'],
                 compression=None,
                 pretrained=None,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        img_size = image_size(img_size)
        if output_cls_token and not with_cls_token:
            raise UsageAssertionError(
                'output_cls_token=True returns the class token, so it needs '
                'with_cls_token=True; set both, or output_cls_token=False')
        check_pretrained(pretrained, init_cfg)
        if isinstance(pretrained, str):
            warnings.warn('DeprecationWarning: pretrained is deprecated, '
                          'please use "init_cfg" instead')
            self.init_cfg = dict(type='Pretrained', checkpoint=pretrained)

        self.img_size = img_size
        self.patch_size = patch_size
        self.interpolate_mode = interpolate_mode
        self.norm_eval = norm_eval
        self.pretrained = pretrained
        self.out_origin = out_origin
        self.frozen_exclude = frozen_exclude
        self.with_cls_token = with_cls_token
        self.output_cls_token = output_cls_token

        self.patch_embed = PatchEmbed(
            in_channels=in_channels,
            embed_dims=embed_dims,
            conv_type='Conv2d',
            kernel_size=patch_size,
            stride=patch_size,
            padding=patch_pad,
            bias=patch_bias,
            norm_cfg=norm_cfg if patch_norm else None,
            init_cfg=None)
        self.patch_pad = patch_pad
        # structures are built for the grid the model runs on at img_size
        # (a partial patch is padded up); pos_embed keeps mmseg's size so
        # its checkpoints load, and is resized to that grid in forward
        self.grid_size = self.token_grid(img_size)
        self.pos_grid = (img_size[0] // patch_size, img_size[1] // patch_size)
        num_patches = self.pos_grid[0] * self.pos_grid[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1,
                                                  embed_dims))
        self.drop_after_pos = nn.Dropout(p=drop_rate)
        self.pre_norm = pre_norm
        if pre_norm:
            self.ln_pre = build_norm_layer(norm_cfg, embed_dims)[1]

        self.out_indices = block_indices(out_indices, num_layers)

        dpr = torch.linspace(0, drop_path_rate, num_layers).tolist()
        self.layers = nn.ModuleList(
            TransformerBlock(embed_dims, num_heads, mlp_ratio * embed_dims,
                             drop_rate, attn_drop_rate, dpr[i], qkv_bias,
                             act_cfg, norm_cfg, with_cp, num_fcs)
            for i in range(num_layers))
        self.mlp_ratio = mlp_ratio
        self.final_norm = final_norm
        if final_norm:
            self.ln1 = build_norm_layer(norm_cfg, embed_dims)[1]

        self.compression = parse_compression(compression, num_layers)
        reducer = build_reducer(self.compression, self.grid_size,
                                embed_dims, with_cls_token, img_size)
        # registered under the name its checkpoints use
        self._reducer_name = getattr(reducer, 'state_dict_name', None)
        if reducer is not None:
            self.add_module(self._reducer_name, reducer)
        self._freeze()

    # ------------------------------------------------------------------
    # structures
    @property
    def reducer(self) -> Optional[TokenReducer]:
        """The token reducer the blocks run through (None: dense). It is
        registered under the name its checkpoints use (its
        ``state_dict_name``)."""
        return self._modules.get(self._reducer_name) \
            if self._reducer_name else None

    @property
    def compressed_units(self) -> List[Tuple[int, int]]:
        """Units with a static structure (none for the dense model and the
        reducers without structures)."""
        return [] if self.reducer is None else list(self.reducer.units)

    @contextmanager
    def dense_forward(self):
        """Run every block on all tokens inside the ``with`` block: the
        token-scoring pass needs the dense model's attention. (MSTM's
        coarse branch still runs: it is part of the model, not a merge.)"""
        reducer = self.reducer
        if reducer is None:
            yield self
            return
        previous, reducer.bypass = reducer.bypass, True
        try:
            yield self
        finally:
            reducer.bypass = previous

    def structures(self) -> List[CompressionStructure]:
        """Current structure of every compressed unit, in block order."""
        return [] if self.reducer is None else self.reducer.structures()

    def set_structures(self, structures: Sequence[CompressionStructure]) -> None:
        """Install one structure per compressed unit (in block order)."""
        if self.reducer is None:
            raise ValueError(
                'the dense model (compression=None) has no structures; '
                f'set_structures applies to {methods_with_structures()}')
        self.reducer.set_structures(structures)

    # ------------------------------------------------------------------
    # weights
    def init_weights(self):
        if isinstance(self.init_cfg, dict) and \
                self.init_cfg.get('type') == 'Pretrained':
            checkpoint = CheckpointLoader.load_checkpoint(
                self.init_cfg['checkpoint'], logger=None, map_location='cpu')
            state_dict = checkpoint.get('state_dict', checkpoint)
            prefix = self.init_cfg.get('prefix')
            if prefix:
                prefix = prefix.rstrip('.') + '.'
                state_dict = {k[len(prefix):]: v for k, v in state_dict.items()
                              if k.startswith(prefix)}
            if 'pos_embed' in state_dict and \
                    state_dict['pos_embed'].shape != self.pos_embed.shape:
                print_log(f'Resize the pos_embed shape from '
                          f'{tuple(state_dict["pos_embed"].shape)} to '
                          f'{tuple(self.pos_embed.shape)}')
                old = int(math.sqrt(state_dict['pos_embed'].shape[1] - 1))
                state_dict['pos_embed'] = self.resize_pos_embed(
                    state_dict['pos_embed'], self.pos_grid, (old, old),
                    self.interpolate_mode)
            load_state_dict(self, state_dict, strict=False, logger=None)
        elif self.init_cfg is not None:
            super().init_weights()
        else:
            trunc_normal_(self.pos_embed, std=.02)
            trunc_normal_(self.cls_token, std=.02)
            for name, m in self.named_modules():
                if isinstance(m, nn.Linear):
                    trunc_normal_(m.weight, std=.02)
                    if m.bias is not None:
                        if 'ffn' in name:
                            nn.init.normal_(m.bias, mean=0., std=1e-6)
                        else:
                            nn.init.constant_(m.bias, 0)
                elif isinstance(m, QKVProjection):
                    trunc_normal_(m.in_proj_weight, std=.02)
                    if m.in_proj_bias is not None:
                        nn.init.constant_(m.in_proj_bias, 0)
                elif isinstance(m, nn.Conv2d):
                    kaiming_init(m, mode='fan_in', bias=0.)
                elif isinstance(m, (_BatchNorm, nn.GroupNorm, nn.LayerNorm)):
                    constant_init(m, val=1.0, bias=0.)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        # A checkpoint's structures must match this model's compressed units:
        # loading them into other blocks would be a silent wrong answer.
        key = f'{prefix}{STRUCTURES_NAME}.'
        saved = sorted({k[len(key):].split('.')[0]
                        for k in state_dict if k.startswith(key)}, key=int)
        ours = [str(first) for first, _ in sorted(self.compressed_units)]
        if saved and saved != ours:
            raise ValueError(
                f'the checkpoint has compressed units starting at blocks '
                f'{saved} but this model is configured with {ours} '
                f'(compression={self.compression}); make the config\'s '
                '`compression` match the one the checkpoint was made with')
        if ours and not saved and any(k.startswith(prefix) for k in state_dict):
            print_log(
                'loading a checkpoint without compression structures into a '
                'compressed PMVisionTransformer: every compressed unit keeps '
                'the built-in lattice structure (run tools/prune.py to derive '
                'one from token scores)', logger='current', level=30)
        super()._load_from_state_dict(state_dict, prefix, local_metadata,
                                      strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _freeze(self):
        if 'all' in self.frozen_exclude:
            return
        for name, param in self.named_parameters():
            if not any(exclude in name for exclude in self.frozen_exclude):
                param.requires_grad = False

    @staticmethod
    def resize_pos_embed(pos_embed: Tensor, input_shape, pos_shape,
                         mode: str) -> Tensor:
        """Resize the patch part of ``pos_embed`` (1, 1 + h*w, C)."""
        pos_h, pos_w = pos_shape
        cls_pos = pos_embed[:, :1]
        grid = pos_embed[:, -pos_h * pos_w:].reshape(1, pos_h, pos_w, -1)
        grid = resize(grid.permute(0, 3, 1, 2), size=tuple(input_shape),
                      align_corners=False, mode=mode)
        return torch.cat((cls_pos, grid.flatten(2).transpose(1, 2)), dim=1)

    # ------------------------------------------------------------------
    # forward
    def token_grid(self, size) -> Tuple[int, int]:
        """The token grid the patch embedding makes of an input of ``size``
        (H, W): 'corner'/'same' padding pads a partial patch up, a numeric
        padding drops it (as a convolution does)."""
        return token_grid(size, self.patch_size, self.patch_pad)

    def _check_grid(self, inputs: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        """Pad inputs whose token grid fits inside the structures' grid up
        to it (the structures made for it run); a larger one runs on
        structures the same rule makes for its own grid (the reducer's
        ``compressors``, made once per grid). Returns the (maybe padded)
        inputs and the grid the outputs are cropped back to."""
        p = self.patch_size
        grid = self.token_grid(inputs.shape[-2:])
        reducer = self.reducer
        if (reducer is None or not reducer.units or reducer.bypass
                or grid == self.grid_size):
            return inputs, grid
        gh, gw = self.grid_size
        if grid[0] > gh or grid[1] > gw:
            return inputs, grid
        pad = (0, gw * p - inputs.shape[-1], 0, gh * p - inputs.shape[-2])
        return F.pad(inputs, pad), grid

    def _embed(self, inputs: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        x, hw = self.patch_embed(inputs)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        pos = self.pos_embed
        if x.shape[1] != pos.shape[1]:
            pos = self.resize_pos_embed(pos, hw, self.pos_grid,
                                        self.interpolate_mode)
        x = self.drop_after_pos(x + pos)
        if not self.with_cls_token:
            x = x[:, 1:]
        if self.pre_norm:
            x = self.ln_pre(x)
        return x, hw

    def _to_output(self, x: Tensor, hw, crop) -> Tensor | list:
        num_prefix = 1 if self.with_cls_token else 0
        b, _, c = x.shape
        out = x[:, num_prefix:].reshape(b, hw[0], hw[1], c)
        out = out[:, :crop[0], :crop[1]].permute(0, 3, 1, 2).contiguous()
        if self.output_cls_token:
            return [out, x[:, 0]]
        return out

    def _check_inputs(self, inputs) -> None:
        """A floating-point (B, C, H, W) batch of at least one image with
        the backbone's channels, as mmseg's data preprocessor makes."""
        channels = self.patch_embed.projection.in_channels
        fix = ('pass normalised float images of shape (B, '
               f'{channels}, H, W), as SegDataPreProcessor (or '
               'mmseg_pm.apis.init_segmentor + mmseg.apis.inference_model) '
               'makes them')
        if not isinstance(inputs, Tensor):
            raise UsageError(f'the backbone takes a tensor, got '
                             f'{type(inputs).__name__}; {fix}')
        if not inputs.is_floating_point():
            raise UsageError(f'the backbone got {inputs.dtype} images; '
                             f'{fix} (e.g. (x.float() - mean) / std)')
        if inputs.dim() != 4:
            raise UsageError(f'the backbone got a {inputs.dim()}-D input of '
                             f'shape {tuple(inputs.shape)}; {fix} (one '
                             'image: x[None])')
        if inputs.shape[1] != channels:
            raise UsageError(f'the backbone got {inputs.shape[1]} channels '
                             f'(shape {tuple(inputs.shape)}); {fix}')
        weights = self.cls_token.dtype
        if inputs.dtype != weights and not any(
                torch.is_autocast_enabled(d) for d in ('cpu', 'cuda')):
            raise UsageError(f'the backbone got {inputs.dtype} images but its '
                             f'weights are {weights}; cast the input '
                             f'(x.to({weights})) or run under torch.autocast')
        if inputs.shape[0] == 0 or min(inputs.shape[2:]) < 1:
            raise UsageError(f'the backbone got an empty batch of shape '
                             f'{tuple(inputs.shape)}; {fix}')

    def forward(self, inputs: Tensor) -> Tuple:
        self._check_inputs(inputs)
        inputs, crop = self._check_grid(inputs)
        x, hw = self._embed(inputs)
        reducer = self.reducer
        state = None if reducer is None else reducer.start(x, hw)
        outs = [self._to_output(x, hw, crop)] if self.out_origin else []
        last = len(self.layers) - 1
        dense = reducer is None or reducer.bypass
        for i, layer in enumerate(self.layers):
            if reducer is None:
                x = layer(x)
            elif dense:  # bypass: the backbone routes, reducers need not
                x, state = reducer.dense_block(i, layer, x, state)
            else:
                x, state = reducer.run_block(i, layer, x, state)
            if i in self.out_indices:
                full = x if dense else reducer.full_grid(i, x, state)
                if i == last and self.final_norm:
                    full = self.ln1(full)
                outs.append(self._to_output(full, hw, crop))
        return tuple(outs)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.LayerNorm):
                    m.eval()
        return self
