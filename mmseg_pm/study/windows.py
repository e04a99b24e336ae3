"""How far the tokens of a static Prune-and-Merge structure travel to
their centre: the merge-window statistics of the study's table."""
from __future__ import annotations

from typing import Sequence

import torch

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
    neighbourhoods without a centre (pruned tokens left out)."""
    distances, holes, largest = [], [], 0
    for s in structures:
        h, w = s.grid
        kept = torch.nonzero(~s.pruned).flatten()
        centre = s.centre[s.group[kept]]
        dy = (kept // w - centre // w).float()
        dx = (kept % w - centre % w).float()
        distances.append(float(torch.sqrt(dy ** 2 + dx ** 2).mean()))
        holes.append(empty_neighbourhoods(s))
        largest = max(largest, int(s.tokens_per_group().max()))
    return dict(mean_distance=sum(distances) / len(distances),
                max_window=largest,
                empty_3x3=sum(holes) / len(holes))
