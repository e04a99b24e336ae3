"""FLOPs of what actually runs, counted by torch's FlopCounterMode.

torch counts matrix products (linear, conv, bmm, fused attention on GPU) but
not the CPU fused-attention kernel nor the segment sum of a sparse merge; both
are added here so dense and compressed models are counted alike. One
multiply-add is 2 FLOPs. Element-wise work (norms, activations, softmax) is
not counted, as in the field's usual convention.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args,
                    out_shape=None, **kwargs) -> int:
    """q k^T and probs v: 2 * 2 * B * heads * Tq * Tk * d."""
    b, h, tq, d = query_shape
    tk, dv = key_shape[-2], value_shape[-1]
    return 2 * b * h * tq * tk * d + 2 * b * h * tq * tk * dv


def _index_add_flops(self_shape, dim, index_shape, source_shape, *args,
                     out_shape=None, **kwargs) -> int:
    """A weighted segment sum: one multiply-add per source element."""
    n = 1
    for s in source_shape:
        n *= s
    return 2 * n


CUSTOM_FLOPS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
    aten.index_add: _index_add_flops,
    aten.index_add_: _index_add_flops,
}


@torch.no_grad()
def count_flops(module: nn.Module, *inputs: Tensor, **kwargs) -> int:
    """FLOPs of one forward of ``module(*inputs, **kwargs)``."""
    with FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS) as fc:
        module(*inputs, **kwargs)
    return int(fc.get_total_flops())


def vit_flops(grid_tokens: int, embed_dims: int, num_layers: int,
              patch_size: int, in_channels: int = 3, mlp_ratio: int = 4,
              tokens_per_layer=None) -> int:
    """Analytic FLOPs of a ViT encoder (patch embedding + blocks).

    ``tokens_per_layer[i]`` is the number of tokens block i runs on
    (default: all patch tokens + the class token). Used to cross-check
    :func:`count_flops`.
    """
    c = embed_dims
    total = 2 * grid_tokens * c * in_channels * patch_size**2
    if tokens_per_layer is None:
        tokens_per_layer = [grid_tokens + 1] * num_layers
    for t in tokens_per_layer:
        total += 2 * t * c * 3 * c          # qkv
        total += 2 * 2 * t * t * c          # q k^T and probs v
        total += 2 * t * c * c              # output projection
        total += 2 * 2 * t * c * mlp_ratio * c  # MLP
    return total
