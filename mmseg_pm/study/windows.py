"""How far the tokens of a Prune-and-Merge structure travel to their
centre: the merge-window statistics of the study's table, of the static
windows (:func:`window_stats`) or of the windows each image formed around
the same centres (:func:`image_window_stats`, content-aware windows)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from mmseg_pm.compression.structure import CompressionStructure


def empty_neighbourhoods(structure: CompressionStructure,
                         size: int = 3) -> float:
    """Share of the ``size`` x ``size`` token neighbourhoods that hold no
    centre: the holes a static structure leaves, where every token is
    rebuilt from a centre outside its neighbourhood."""
    h, w = structure.grid
    centres = torch.zeros(h * w)
    centres[structure.centre] = 1.0
    kernel = (min(size, h), min(size, w))
    covered = torch.nn.functional.max_pool2d(centres.view(1, 1, h, w),
                                             kernel, stride=1)
    return float((covered == 0).float().mean())


def window_stats(structures: Sequence[CompressionStructure]) -> dict:
    """How far merged tokens travel, over all units: the mean grid distance
    from a token to its centre, the largest window and the share of 3x3
    neighbourhoods without a centre (pruned tokens left out): the static
    windows, as :func:`image_window_stats` of one image that formed
    exactly them."""
    # the structure's group is a source map without prefix (pruned < 0)
    stats = image_window_stats(structures, [s.group[None] for s in structures],
                               num_prefix=0)
    del stats['moved']  # 0 by construction
    return stats


def image_window_stats(structures: Sequence[CompressionStructure],
                       sources: Sequence[Tensor], num_prefix: int = 1
                       ) -> dict:
    """:func:`window_stats` of the windows the images formed: ``sources``
    holds, per unit, the (B, P + N) window of every token of B images
    (``TokenCompressor.source``: P prefix slots first, -1 pruned). Adds
    ``moved``: the share of the kept tokens in another window than the
    static structure's. The largest window is the largest in any image."""
    if len(structures) != len(sources):
        raise ValueError(f'{len(sources)} source maps for '
                         f'{len(structures)} structures')
    distances, moved, holes, largest = [], [], [], 0
    for s, source in zip(structures, sources):
        h, w = s.grid
        slots = source[:, num_prefix:].cpu()
        kept = slots >= 0
        group = (slots - num_prefix).clamp(min=0)
        centre = s.centre[group]
        token = torch.arange(h * w).expand_as(slots)
        dy = (token // w - centre // w).float()
        dx = (token % w - centre % w).float()
        distances.append(float(torch.sqrt(dy ** 2 + dx ** 2)[kept].mean()))
        moved.append(float((group != s.group)[kept].float().mean()))
        sizes = torch.zeros(slots.shape[0], s.num_groups).scatter_add_(
            1, group, kept.float())
        largest = max(largest, int(sizes.max()))
        holes.append(empty_neighbourhoods(s))
    count = len(structures)
    return dict(mean_distance=sum(distances) / count, max_window=largest,
                empty_3x3=sum(holes) / count, moved=sum(moved) / count)
