"""Gradient-weighted attention scores of patch tokens (DESIGN.md §2.1).

For every block and every patch token j used as an attention key,

    v_j = (1 / (B * heads * T)) * sum_{batch, heads, queries} A * dL/dA
    S_j += |v_j|                      (summed over the scoring batches)

a first-order Taylor estimate of the loss change if token j's attention
column were removed. After the pass each layer's vector is L2-normalised
and optionally weighted by depth, ``1 - depth_lambda * l``.

The pass runs the segmentor *dense* (its compressors bypassed), on its own
segmentation loss, with the blocks' explicit-softmax path so that A exists.
It runs in eval mode: dropout and drop-path are off, so the scores depend on
the weights and the data only (and are reproducible). Weights are never
changed and their ``.grad`` is never touched: only dL/dA is computed.
"""
from __future__ import annotations

import itertools
from contextlib import ExitStack, contextmanager
from typing import Iterable, List, Optional, Tuple

import torch
from torch import Tensor, nn
from tqdm import tqdm


def attention_scores(probs: Tensor, grad: Tensor, num_prefix: int) -> Tensor:
    """|v_j| of one layer and one batch for every patch key j.

    ``probs`` and ``grad`` are (B, heads, T, T) with keys on the last axis;
    the first ``num_prefix`` keys (the class token) are left out.
    """
    b, h, t, _ = probs.shape
    # float64: v_j is a small difference of many terms. One (T, T) slice at
    # a time keeps the float64 copies small.
    v = torch.zeros(t, dtype=torch.float64, device=probs.device)
    for a, g in zip(probs.flatten(0, 1), grad.flatten(0, 1)):
        v += (a.double() * g.double()).sum(dim=0)
    return (v / (b * h * t))[num_prefix:].abs()


def normalise_scores(scores: Tensor, depth_lambda: float = 0.0) -> Tensor:
    """Per-layer L2 normalisation ``|S| / (||S|| + 1e-8)`` of (L, N) scores,
    then layer l (0-based) times ``1 - depth_lambda * l``."""
    num_layers = scores.shape[0]
    if depth_lambda < 0 or depth_lambda * (num_layers - 1) >= 1:
        raise ValueError(
            f'depth_lambda={depth_lambda} gives a non-positive depth weight '
            f'1 - lambda*l for some of the {num_layers} layers; use 0 <= '
            f'lambda < {1 / max(num_layers - 1, 1):.4g} (authors: 0 for '
            'Segmenter, 0.025 for DeiT)')
    scores = scores.abs()
    scores = scores / (scores.norm(dim=1, keepdim=True) + 1e-8)
    depth = 1 - depth_lambda * torch.arange(num_layers, dtype=scores.dtype)
    return scores * depth[:, None]


def pm_backbone(model: nn.Module) -> nn.Module:
    """The ``PMVisionTransformer`` of a segmentor (or the backbone itself)."""
    from mmseg_pm.models.backbones import PMVisionTransformer

    backbone = getattr(model, 'backbone', model)
    if not isinstance(backbone, PMVisionTransformer):
        raise TypeError(
            'token scoring needs a segmentor whose backbone is '
            f'PMVisionTransformer, got {type(backbone).__name__}; use a '
            "Prune-and-Merge config (backbone type='PMVisionTransformer', "
            'which loads mmseg VisionTransformer checkpoints as they are)')
    return backbone


@contextmanager
def scoring_mode(model: nn.Module, capture: List[Tensor]):
    """Dense, eval-mode model whose blocks append their attention
    probabilities to ``capture``; every setting is restored afterwards."""
    backbone = pm_backbone(model)
    was_training = model.training
    requires_grad = {p: p.requires_grad for p in model.parameters()}
    with_cp = [layer.with_cp for layer in backbone.layers]
    hooks = [layer.attn.probs_hook for layer in backbone.layers]
    try:
        with ExitStack() as stack:
            stack.enter_context(backbone.dense_forward())
            model.eval()
            for p in requires_grad:
                p.requires_grad_(True)  # so A is part of the graph
            for layer in backbone.layers:
                layer.with_cp = False  # recomputation would call hooks twice
                layer.attn.probs_hook = capture.append
            yield backbone
    finally:
        model.train(was_training)
        for p, flag in requires_grad.items():
            p.requires_grad_(flag)
        for layer, cp, hook in zip(backbone.layers, with_cp, hooks):
            layer.with_cp = cp
            layer.attn.probs_hook = hook


def _check_grid(inputs: Tensor, backbone: nn.Module) -> None:
    p = backbone.patch_size
    grid = (inputs.shape[-2] // p, inputs.shape[-1] // p)
    if grid != tuple(backbone.grid_size):
        raise ValueError(
            f'scoring batch of size {tuple(inputs.shape[-2:])} gives a '
            f'{grid[0]}x{grid[1]} token grid, but the structures are built '
            f'for {backbone.grid_size[0]}x{backbone.grid_size[1]} '
            f'(backbone img_size={backbone.img_size}); make the training '
            "crop (the data preprocessor's size) equal img_size")


def _check_depth_lambda(model: nn.Module, depth_lambda: float) -> None:
    """Fail before the pass, not after it."""
    normalise_scores(torch.zeros(len(pm_backbone(model).layers), 1),
                     depth_lambda)


def token_score_totals(model: nn.Module,
                       batches: Iterable[dict],
                       num_iters: Optional[int] = None,
                       progress: bool = True) -> Tuple[Tensor, int]:
    """The unnormalised sums ``S`` of :func:`token_scores` and the number of
    batches they add up: (num_layers, N) float64 CPU. Sums of disjoint
    batch sets add up to the sum over their union (how ranks combine)."""
    if num_iters is not None and num_iters < 1:
        raise ValueError(f'num_iters must be >= 1, got {num_iters}')
    backbone = pm_backbone(model)
    num_prefix = 1 if backbone.with_cls_token else 0
    num_layers = len(backbone.layers)
    num_tokens = backbone.grid_size[0] * backbone.grid_size[1]
    totals = torch.zeros(num_layers, num_tokens, dtype=torch.float64)
    if num_iters is None:
        total = len(batches) if hasattr(batches, '__len__') else None
    else:
        batches = itertools.islice(batches, num_iters)
        total = num_iters
    seen = 0
    captured: List[Tensor] = []
    with scoring_mode(model, captured):
        for batch in tqdm(batches, total=total, desc='token scores',
                          unit='batch', disable=not progress):
            data = model.data_preprocessor(batch, training=True)
            _check_grid(data['inputs'], backbone)
            captured.clear()
            loss, _ = model.parse_losses(model(**data, mode='loss'))
            if len(captured) != num_layers:
                raise RuntimeError(
                    f'expected attention from {num_layers} blocks, got '
                    f'{len(captured)}')
            grads = torch.autograd.grad(loss, captured)
            for layer, (probs, grad) in enumerate(zip(captured, grads)):
                totals[layer] += attention_scores(
                    probs.detach(), grad, num_prefix).cpu()
            captured.clear()
            seen += 1
    return totals, seen


def token_scores(model: nn.Module,
                 batches: Iterable[dict],
                 num_iters: Optional[int] = None,
                 depth_lambda: float = 0.0,
                 progress: bool = True) -> Tensor:
    """Score every patch token of every block of an mmseg segmentor.

    Args:
        model: an mmseg segmentor (e.g. ``EncoderDecoder``) whose backbone is
            a ``PMVisionTransformer``; it is run dense.
        batches: data batches as mmseg's dataloaders yield them; each goes
            through ``model.data_preprocessor(batch, training=True)`` and
            ``model(**data, mode='loss')``.
        num_iters: use the first ``num_iters`` batches (required for an
            infinite loader); None uses them all.
        depth_lambda: depth weight ``1 - depth_lambda * l``.
        progress: show a tqdm bar.

    Returns:
        (num_layers, N) float32 CPU tensor, one L2-normalised row per block.
    """
    _check_depth_lambda(model, depth_lambda)
    totals, seen = token_score_totals(model, batches, num_iters, progress)
    if seen == 0:
        raise ValueError('token scoring got no batches')
    return normalise_scores(totals, depth_lambda).float()


def token_scores_from_config(model: nn.Module,
                             cfg,
                             num_iters: int,
                             depth_lambda: float = 0.0,
                             seed: int = 0,
                             progress: bool = True) -> Tensor:
    """:func:`token_scores` on ``num_iters`` batches of the config's own
    ``train_dataloader`` data set, a seeded shuffle of it whose random
    augmentations are seeded per sample, so the same config, weights and
    seed give the same scores.

    In a distributed run (a process group started, e.g. by
    ``mmseg_pm.apis.init_distributed``) the ranks split the ``num_iters``
    batches and add up their totals before normalising: N processes give
    the scores of one process, up to float64 summation order.
    """
    from mmengine.dist import get_rank
    from mmengine.registry import init_default_scope

    from mmseg_pm.apis.distributed import (build_rank_dataloader,
                                           sum_across_ranks)

    if 'train_dataloader' not in cfg:
        raise ValueError('the config has no train_dataloader to score with')
    if num_iters < 1:
        raise ValueError(f'num_iters must be >= 1, got {num_iters}')
    _check_depth_lambda(model, depth_lambda)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    loader = build_rank_dataloader(cfg.train_dataloader, num_iters, seed)
    totals, _ = token_score_totals(model, loader,
                                   progress=progress and get_rank() == 0)
    return normalise_scores(sum_across_ranks(totals), depth_lambda).float()
