"""Measurements of one model: FLOPs, parameters, time and peak memory.

Timing is interleaved (:mod:`mmseg_pm.apis.timing`). Peak memory is the
most tensor memory held above what was allocated before the step (model
and input excluded): on a GPU ``torch.cuda.max_memory_allocated``; on
the CPU the allocations and frees the profiler records from torch's CPU
allocator, summed in order.
"""
from __future__ import annotations

import contextlib
import functools
import gc
from typing import Callable, List, Optional, Sequence

import torch
from torch import Tensor, nn

from mmseg_pm.apis.timing import synchronize
from mmseg_pm.export import TensorForward
from mmseg_pm.utils.flops import count_flops, vit_flops

PARTS = ('backbone', 'segmentor')
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16,
          'fp16': torch.float16}


def part_module(segmentor: nn.Module, part: str) -> nn.Module:
    """The module timed for ``part``: the backbone alone, or the segmentor
    (backbone + decode head, ``mode='tensor'``: logits before resizing, the
    graph tools/export_onnx.py exports)."""
    if part == 'backbone':
        return segmentor.backbone
    if part == 'segmentor':
        return TensorForward(segmentor)
    raise ValueError(f'unknown part {part!r}; use one of {PARTS}')


def autocast(device: str, dtype: str):
    """Autocast to ``dtype`` ('fp32' = none)."""
    if dtype == 'fp32':
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(':')[0],
                          dtype=DTYPES[dtype])


def _profiled_peak_bytes(step: Callable[[], object]) -> int:
    """Peak of (bytes allocated - bytes freed) by torch's CPU allocator
    while ``step`` runs, from the profiler's allocation events."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU],
                 profile_memory=True) as prof:
        step()
    events, stack = [], list(
        prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation and \
                event.extra_fields.device.type == 'cpu':
            events.append((event.start_time_ns, event.extra_fields.alloc_size))
    live = peak = 0
    for _, size in sorted(events, key=lambda e: e[0]):
        live += size
        peak = max(peak, live)
    return peak


def peak_memory_bytes(step: Callable[[], object], device: str) -> int:
    """Most tensor memory held at once by ``step`` beyond what was held
    before it."""
    gc.collect()
    if device.startswith('cuda'):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    return _profiled_peak_bytes(step)


def inference_step(module: nn.Module, x: Tensor, device: str,
                   dtype: str) -> Callable[[], object]:
    def step():
        with torch.inference_mode(), autocast(device, dtype):
            return module(x)
    return step


def _outputs_loss(out) -> Tensor:
    if isinstance(out, Tensor):
        return out.float().mean()
    return sum(_outputs_loss(o) for o in out)


def train_step(module: nn.Module, x: Tensor, device: str,
               dtype: str) -> Callable[[], object]:
    """Forward + backward of the mean of the outputs, in train mode; the
    gradients are dropped afterwards."""
    def step():
        module.train()
        try:
            with autocast(device, dtype):
                loss = _outputs_loss(module(x))
            loss.backward()
        finally:
            module.eval()
            for p in module.parameters():
                p.grad = None
    return step


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def counted_flops(module: nn.Module, x: Tensor) -> int:
    """FLOPs of what runs for one forward of ``x`` (fp32)."""
    module.eval()
    return count_flops(module, x)


# ADE20K's normalisation in mmseg's Segmenter configs (RGB order)
ADE_MEAN = (123.675, 116.28, 103.53)
ADE_STD = (58.395, 57.12, 57.375)
# scenes an input-dependent method's FLOPs are averaged over
FLOPS_SCENES = 8


def scene_images(batch: int, hw: Sequence[int], device: str = 'cpu',
                 seed: int = 0) -> Tensor:
    """(batch, 3, H, W) normalised synthetic ADE20K-format scenes, a
    different one per batch element: a method that merges by content
    (ALGM) gets something like real images to merge, not noise, and not
    one image repeated."""
    return torch.stack([_scene(tuple(hw), seed, i) for i in range(batch)]
                       ).to(device)


@functools.lru_cache(maxsize=64)
def _scene(hw: tuple, seed: int, index: int) -> Tensor:
    """Scene ``index`` of ``seed``, normalised (3, H, W), rendered once."""
    import numpy as np

    from mmseg_pm.datasets.synthetic_ade import make_sample

    image, _ = make_sample(hw, np.random.default_rng([seed, index]))
    x = torch.from_numpy(image).permute(2, 0, 1).float()
    mean = torch.tensor(ADE_MEAN)[:, None, None]
    std = torch.tensor(ADE_STD)[:, None, None]
    return (x - mean) / std


def mean_scene_flops(module: nn.Module, hw: Sequence[int],
                     device: str = 'cpu') -> float:
    """Counted FLOPs at batch 1 averaged over ``FLOPS_SCENES`` scenes (an
    input-dependent method's FLOPs depend on the image)."""
    scenes = scene_images(FLOPS_SCENES, hw, device)
    return sum(counted_flops(module, x[None]) for x in scenes) / len(scenes)


def tokens_per_layer(backbone: nn.Module, grid: Sequence[int]
                     ) -> Optional[List[int]]:
    """Tokens each block runs on (class token included); None for a
    method whose counts depend on the image (no fixed shapes). A reducer
    that merges inside a block counts the tokens each block outputs (its
    MLP runs on them; its attention on the previous block's)."""
    prefix = 1 if getattr(backbone, 'with_cls_token', True) else 0
    num_tokens = prefix + grid[0] * grid[1]
    reducer = getattr(backbone, 'reducer', None)
    if reducer is None or reducer.bypass:
        return [num_tokens] * len(backbone.layers)
    if not reducer.fixed_shapes:
        return None
    return reducer.tokens_per_block(num_tokens, len(backbone.layers))


def analytic_backbone_flops(backbone: nn.Module, image_hw: Sequence[int]
                            ) -> Optional[int]:
    """:func:`vit_flops` for the backbone's shapes and token counts, plus
    its reducer's merges (``merge_flops``); None where the reducer has no
    formula (it merges mid-block, each image its own way)."""
    proj = backbone.patch_embed.projection
    patch = proj.kernel_size[0]
    grid = (-(-image_hw[0] // patch), -(-image_hw[1] // patch))
    embed_dims = proj.out_channels
    reducer = getattr(backbone, 'reducer', None)
    merges = 0
    if reducer is not None and not reducer.bypass:
        merges = reducer.merge_flops(grid, embed_dims, backbone.out_indices)
        if merges is None:
            return None
    tokens = tokens_per_layer(backbone, grid)
    return vit_flops(grid[0] * grid[1], embed_dims, len(backbone.layers),
                     patch, proj.in_channels, mlp_ratio(backbone, embed_dims),
                     tokens_per_layer=tokens) + merges


def mlp_ratio(backbone, embed_dims: int) -> int:
    """The MLP's hidden width over the embedding width (mmseg's
    VisionTransformer does not keep the ratio; ours does)."""
    if hasattr(backbone, 'mlp_ratio'):
        return backbone.mlp_ratio
    return backbone.layers[0].ffn.layers[0][0].out_features // embed_dims


def op_profile(step: Callable[[], object], device: str,
               top: int = 8) -> List[dict]:
    """Where one call of ``step`` spends its time: the ``top`` operators by
    self time (CPU, or the GPU's on CUDA) with their share of the total.
    The why behind a row that is slower than its FLOPs say."""
    from torch.profiler import ProfilerActivity, profile
    cuda = device.startswith('cuda')
    activities = [ProfilerActivity.CPU] + \
        ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
        synchronize(device)
    key = 'self_device_time_total' if cuda else 'self_cpu_time_total'
    events = [e for e in prof.key_averages() if getattr(e, key) > 0]
    total = sum(getattr(e, key) for e in events) or 1
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    return [dict(op=e.key, ms=getattr(e, key) / 1e3, calls=e.count,
                 share=getattr(e, key) / total) for e in events[:top]]
