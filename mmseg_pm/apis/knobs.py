"""The compression methods of the quality study and the benchmark, each at
one integer knob: which blocks each method compresses and the backbone's
``compression=`` dict at a knob value (:func:`compression_for`), so that a
study row and a benchmark row of a method mean the same model. The FLOPs
search over the knob is :mod:`mmseg_pm.apis.calibration`.

Every method has one integer knob whose FLOPs are monotone in it:

* Prune and Merge (every ``family='pm'`` method: authors' and residual
  reconstruction, each centre placement, the random floor): the centres per
  unit, ``k`` of the N patch tokens (before the global ranking shares them
  out among the layers; the placement moves centres, never their counts,
  so every placement has the same FLOPs);
* MSTM: the crucial tokens kept at its first pruning block (every pruning
  block keeps the same fraction of its current tokens);
* ToMe: the total number of merges ``q`` spread over the blocks as evenly as
  possible (``q // L`` per block, one more in the first ``q % L`` blocks),
  so its FLOPs move in steps far finer than one ``r``;
* Hourglass: a position on a path of (alpha, h x w) settings ordered by
  FLOPs (:func:`hourglass_path`): first the authors' relative depth (their
  first block on clusters is 10 of 24, so alpha = round(10/24 L)) with
  fewer and fewer clusters down to the authors' share of the tokens
  (28x28 of 40x40, 49 %), then one block earlier at a time, each level
  continuing below the previous level's FLOPs, down to block 1 (block 0
  stays dense, as for Prune and Merge) where the clusters go down to 1x1.
  Cluster grids are the squarest h x w (h >= w, h <= 1.5 w) of each count.
* ALGM: its local-merge threshold in thousandths, tau = knob / 1000 (at
  24x24 tokens the study's model already merges 35 % of its GFLOPs away at
  tau 0.99, so hundredths cannot reach 70 %; a lower
  tau merges more windows, so its FLOPs rise with the knob). ALGM's token
  counts depend on the image: its FLOPs are the mean over the validation
  images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from mmseg_pm.compression.tome import capped_merges


@dataclass(frozen=True)
class Method:
    """One compression method of the study.

    Prune-and-Merge-family methods (``family='pm'``) differ in their unit
    layout (``mode``), window rule, reconstruction and centre placement
    (mmseg_pm.compression.search); MSTM and ToMe have their own families.
    """

    name: str
    label: str
    family: str  # 'pm', 'mstm', 'tome', 'algm' or 'hourglass'
    marker: str  # matplotlib marker of its points
    mode: str = 'layer'
    rule: str = 'row'
    reconstruct: str = 'pinv'
    placement: str = 'score'
    assign: str = 'static'


METHODS: Dict[str, Method] = {m.name: m for m in (
    Method('pm-row', "PM per layer, row rule, authors' pinv", 'pm', 'o'),
    Method('pm-nearest', 'PM per layer, nearest rule, pinv', 'pm', 's',
           rule='nearest'),
    Method('pm-span', 'PM span mode, pinv', 'pm', 'D', mode='span'),
    Method('random', 'PM random centres, pinv (floor)', 'pm', 'X',
           placement='random'),
    Method('res-row', 'PM per layer, row rule, residual', 'pm', 'o',
           reconstruct='residual'),
    Method('res-span', 'PM span mode, residual', 'pm', 'D', mode='span',
           reconstruct='residual'),
    Method('res-random', 'PM random centres, residual, static windows',
           'pm', 'X', reconstruct='residual', placement='random'),
    Method('res-content', 'PM random centres, residual, content-aware '
           'windows (the default)', 'pm', 'p', reconstruct='residual',
           placement='random', assign='content'),
    Method('res-nearest', 'PM scored centres, nearest rule, residual', 'pm',
           's', rule='nearest', reconstruct='residual'),
    Method('res-spread', 'PM spread centres, nearest rule, residual', 'pm',
           'P', rule='nearest', reconstruct='residual', placement='spread'),
    Method('res-lattice', 'PM lattice centres, nearest rule, residual', 'pm',
           'h', rule='nearest', reconstruct='residual', placement='lattice'),
    Method('res-span-spread', 'PM span mode, spread centres, residual', 'pm',
           '*', mode='span', rule='nearest', reconstruct='residual',
           placement='spread'),
    Method('mstm', 'MSTM', 'mstm', '^'),
    Method('tome', 'ToMe', 'tome', 'v'),
    Method('algm', 'ALGM', 'algm', 'p'),
    Method('hourglass', "Expedite's Hourglass", 'hourglass', 'p'),
)}


# ---------------------------------------------------------------- layers
def pm_layers(num_layers: int) -> List[int]:
    """Blocks Prune and Merge compresses: all but block 0 (the released
    Segmenter configs likewise leave the first blocks dense)."""
    if num_layers < 2:
        raise ValueError(f'the study needs at least 2 blocks, got '
                         f'{num_layers}')
    return list(range(1, num_layers))


def span_units(num_layers: int) -> List[Tuple[int, int]]:
    """The span-mode units: blocks 1..L-1 in two consecutive halves (the
    first one longer when odd), each with one shared structure."""
    blocks = pm_layers(num_layers)
    if len(blocks) < 2:
        return [(blocks[0], blocks[-1])]
    cut = blocks[0] + math.ceil(len(blocks) / 2) - 1
    return [(blocks[0], cut), (cut + 1, blocks[-1])]


def mstm_layers(num_layers: int) -> List[int]:
    """MSTM's pruning blocks: every other block from block 1, at most three
    (the ViT-S config prunes at 3 of 12 blocks)."""
    pm_layers(num_layers)
    return list(range(1, max(num_layers - 1, 2), 2))[:3]


def algm_layers(num_layers: int) -> Tuple[int, int]:
    """ALGM's local and global blocks (0-based): the first block, and the
    block at the relative depth of the authors' layer 5 of 12 (ViT-T/S/B),
    round(5 / 12 * L) counted from 1, at least block 1 (8 blocks: block 2,
    their layer 3)."""
    pm_layers(num_layers)
    return 0, max(1, round(5 * num_layers / 12) - 1)


# ---------------------------------------------------------------- knobs
# The authors' ViT-L 640 setting: clusters from block 10 of 24 on (their
# clustering after block 9, 0-based), 28x28 clusters of 40x40 tokens.
HOURGLASS_DEPTH = 10 / 24
HOURGLASS_SHARE = (28 * 28) / (40 * 40)


def squareish_grids(grid: Tuple[int, int]) -> Dict[int, Tuple[int, int]]:
    """Cluster count -> its squarest (h, w) grid (h >= w, h <= 1.5 w, at
    most the token grid), for every count below the token count that has
    one."""
    grids = {}
    for h in range(1, grid[0] + 1):
        for w in range(1, min(h, grid[1]) + 1):
            k = h * w
            if 2 * h > 3 * w and h - w > 1 or k >= grid[0] * grid[1]:
                continue
            if k not in grids or h - w < grids[k][0] - grids[k][1]:
                grids[k] = (h, w)
    return dict(sorted(grids.items()))


def hourglass_flops(alpha: int, clusters: int, num_tokens: int,
                    num_layers: int, embed_dims: int, iters: int = 5,
                    outputs: int = 1) -> int:
    """FLOPs of the encoder blocks and Hourglass's own matrix products
    (pooling, distances and updates of every k-means step, the
    reconstruction's distances and one product per output) for
    ``num_tokens`` patch tokens (+ the class token), clustering before
    block ``alpha``. Orders settings; the study calibrates on counted
    FLOPs."""
    c = embed_dims

    def block(t):
        return 24 * t * c * c + 4 * t * t * c

    n, k = num_tokens, clusters
    overhead = 2 * n * k * c * (2 + 2 * iters + outputs)
    return (alpha * block(n + 1) + (num_layers - alpha) * block(k + 1)
            + overhead)


def hourglass_path(num_tokens: int, num_layers: int, embed_dims: int
                   ) -> List[Tuple[int, Tuple[int, int]]]:
    """The Hourglass knob's settings (alpha, (h, w)), FLOPs strictly
    decreasing (see the module docstring)."""
    pm_layers(num_layers)
    side = math.isqrt(num_tokens)
    grids = squareish_grids((side, side))
    start = min(max(round(HOURGLASS_DEPTH * num_layers), 1), num_layers - 1)
    floor = math.ceil(HOURGLASS_SHARE * num_tokens)
    path, last = [], math.inf
    for alpha in range(start, 0, -1):
        for k in sorted(grids, reverse=True):
            if alpha > 1 and k < floor:
                break
            cost = hourglass_flops(alpha, k, num_tokens, num_layers,
                                   embed_dims)
            if cost < last:
                path.append((alpha, grids[k]))
                last = cost
    return path


def keep_rate_for(count: int, num_tokens: int) -> float:
    """A keep rate whose ``int(rate * N)`` is exactly ``count`` (k / N
    itself can round down to k - 1 in floating point)."""
    if not 1 <= count <= num_tokens:
        raise ValueError(f'count must be in [1, {num_tokens}], got {count}')
    return min(1.0, (count + 0.5) / num_tokens)


def tome_schedule(total_merges: int, num_layers: int) -> List[int]:
    """``r`` per block for ``total_merges`` spread evenly, front-loaded."""
    if total_merges < 0:
        raise ValueError(f'total_merges must be >= 0, got {total_merges}')
    base, extra = divmod(total_merges, num_layers)
    return [base + (1 if i < extra else 0) for i in range(num_layers)]


def tome_r(knob: int, num_layers: int, num_tokens: int) -> List[int]:
    """``r`` per block: the schedule capped at what each block can merge
    (patch tokens plus the class token; the backbone refuses more)."""
    return capped_merges(tome_schedule(knob, num_layers), num_tokens + 1)


def knob_range(method: str, num_tokens: int, num_layers: int,
               embed_dims: Optional[int] = None) -> Tuple[int, int]:
    """Inclusive range of the method's knob (Hourglass's path depends on
    the width, ``embed_dims``)."""
    family = METHODS[method].family
    if family == 'hourglass':
        return 0, len(hourglass_path(num_tokens, num_layers,
                                     _width(embed_dims))) - 1
    if family == 'tome':  # ToMe caps each block at half its tokens
        return 0, num_layers * (num_tokens // 2)
    if family == 'algm':  # tau from -1 (every window merges) to 1.01 (none)
        return -1000, 1010
    return 1, num_tokens


def _width(embed_dims: Optional[int]) -> int:
    if embed_dims is None:
        raise ValueError('Hourglass settings depend on the width: pass '
                         'embed_dims')
    return embed_dims


def hourglass_setting(knob: int, num_tokens: int, num_layers: int,
                      embed_dims: Optional[int]
                      ) -> Tuple[int, Tuple[int, int]]:
    path = hourglass_path(num_tokens, num_layers, _width(embed_dims))
    if not 0 <= knob < len(path):
        raise ValueError(f'Hourglass knob must be in [0, {len(path) - 1}], '
                         f'got {knob}')
    return path[knob]


def compression_for(method: str, knob: int, num_layers: int,
                    num_tokens: int, prune_rate: float = 0.0,
                    embed_dims: Optional[int] = None) -> dict:
    """The backbone's ``compression=`` dict of a method at a knob value."""
    family = METHODS[method].family
    if family == 'hourglass':
        alpha, clusters = hourglass_setting(knob, num_tokens, num_layers,
                                            embed_dims)
        return dict(method='hourglass', alpha=alpha, clusters=clusters)
    if family == 'tome':
        return dict(method='tome', layers=list(range(num_layers)),
                    r=tome_r(knob, num_layers, num_tokens))
    if family == 'algm':
        local, glob = algm_layers(num_layers)
        return dict(method='algm', local_layer=local, global_layer=glob,
                    threshold=knob / 1000, window=(2, 2))
    keep_rate = keep_rate_for(knob, num_tokens)
    if family == 'mstm':
        return dict(method='mstm', prune_layers=mstm_layers(num_layers),
                    keep_rate=keep_rate, coarse=True)
    m = METHODS[method]
    units = dict(spans=span_units(num_layers)) if m.mode == 'span' else \
        dict(layers=pm_layers(num_layers))
    return dict(mode=m.mode, **units, keep_rate=keep_rate,
                prune_rate=prune_rate, rule=m.rule,
                reconstruct=m.reconstruct, assign=m.assign)


def knob_text(method: str, knob: int, num_tokens: int,
              num_layers: int, embed_dims: Optional[int] = None) -> str:
    """The calibrated knob in words, for the table."""
    family = METHODS[method].family
    if family == 'hourglass':
        alpha, (h, w) = hourglass_setting(knob, num_tokens, num_layers,
                                          embed_dims)
        return f'{h}x{w} clusters from block {alpha}'
    if family == 'tome':
        r = tome_r(knob, num_layers, num_tokens)
        return f'r={r[0]}' if len(set(r)) == 1 else \
            f'r={"/".join(map(str, r))}'
    if family == 'algm':
        local, glob = algm_layers(num_layers)
        return f'tau {knob / 1000:.3f}, blocks {local} and {glob}'
    rate = knob / num_tokens
    if family == 'mstm':
        return f'keep {rate:.2f} at blocks {mstm_layers(num_layers)}'
    return f'keep {knob}/{num_tokens} ({rate:.2f})'
