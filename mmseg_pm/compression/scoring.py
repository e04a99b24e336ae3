"""Gradient-weighted attention scores of patch tokens (docs/prune_and_merge.md
section 1): the pure arithmetic. Running a segmentor to get the attention and
its gradient is :mod:`mmseg_pm.apis.scoring`.

For every block and every patch token j used as an attention key,

    v_j = (1 / (B * heads * T)) * sum_{batch, heads, queries} A * dL/dA
    S_j += |v_j|                      (summed over the scoring batches)

a first-order Taylor estimate of the loss change if token j's attention
column were removed. After the pass each layer's vector is L2-normalised
and optionally weighted by depth, ``1 - depth_lambda * l``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mmseg_pm.utils.errors import UsageError


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


def check_depth_lambda(num_layers: int, depth_lambda: float) -> None:
    """Refuse a depth weight ``1 - depth_lambda * l`` that is not positive
    for every one of ``num_layers`` layers (before a scoring pass, not
    after it)."""
    if not depth_lambda >= 0 or depth_lambda * (num_layers - 1) >= 1:
        raise UsageError(
            f'depth_lambda={depth_lambda} gives a non-positive depth weight '
            f'1 - lambda*l for some of the {num_layers} layers; use 0 <= '
            f'lambda < {1 / max(num_layers - 1, 1):.4g} (authors: 0 for '
            'Segmenter, 0.025 for DeiT)')


def normalise_scores(scores: Tensor, depth_lambda: float = 0.0) -> Tensor:
    """Per-layer L2 normalisation ``|S| / (||S|| + 1e-8)`` of (L, N) scores,
    then layer l (0-based) times ``1 - depth_lambda * l``."""
    num_layers = scores.shape[0]
    check_depth_lambda(num_layers, depth_lambda)
    scores = scores.abs()
    scores = scores / (scores.norm(dim=1, keepdim=True) + 1e-8)
    depth = 1 - depth_lambda * torch.arange(num_layers, dtype=scores.dtype)
    return scores * depth[:, None]


def scores_from_totals(totals: Tensor, depth_lambda: float = 0.0) -> Tensor:
    """The (L, N) float32 token scores from the summed ``|v_j|`` of a
    scoring pass (float64; sums over disjoint batch sets, e.g. ranks, add
    up first)."""
    return normalise_scores(totals, depth_lambda).float()
