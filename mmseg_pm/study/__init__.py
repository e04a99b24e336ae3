"""Pure pieces of the quality study at matched FLOPs (``tools/study.py``).

The study compresses one trained dense Segmenter with every method to the
same GFLOPs and compares mIoU before and after the same distillation
fine-tune. This module holds what needs no trained model: which blocks each
method compresses, the integer knob each method is calibrated on, the FLOPs
calibration search, and the table and plot.

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
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from mmseg_pm.apis.outputs import save_figure
from mmseg_pm.compression.structure import CompressionStructure
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
    Method('res-random', 'PM random centres, residual (the default)', 'pm',
           'X',
           reconstruct='residual', placement='random'),
    Method('res-content', 'PM random centres, residual, content-aware '
           'windows', 'pm', 'p', reconstruct='residual', placement='random',
           assign='content'),
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
# What tools/study.py runs unless told otherwise: the authors' Prune and
# Merge, the default with static and with content-aware windows, the best
# other placement of the 2026-12-01 study (lattice), and every peer. The
# other PM variants (span mode, the other rules and placements) stay
# selectable with --methods; docs/study.md keeps their measured tables.
DEFAULT_METHODS = ['pm-row', 'res-random', 'res-content', 'res-lattice',
                   'mstm', 'tome', 'algm', 'hourglass']
# The budgets (fractions of the dense GFLOPs). 40 %, not 35 %: block 0
# stays dense for every Prune-and-Merge variant (as in the released
# Segmenter configs) and the decoder costs about a quarter, so 35 % is out
# of their reach on the study's 8-block model (the nearest PM setting is
# 37.9 %).
DEFAULT_BUDGETS = [0.7, 0.5, 0.4]


class CalibrationError(ValueError):
    """No knob value brings a method close enough to the FLOPs target."""


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


def search_ranking(method: str) -> str:
    """Structure-search ranking: the paper's global ('automatic') ranking
    in layer mode; each span ranks alone."""
    return 'layer' if METHODS[method].mode == 'span' else 'global'


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


# ---------------------------------------------------------------- search
def calibrate_knob(flops_at: Callable[[int], float], lo: int, hi: int,
                   target: float) -> Tuple[int, float]:
    """The knob in ``[lo, hi]`` whose FLOPs are nearest ``target``.

    ``flops_at`` must be monotone in the knob (either direction); the
    search bisects, so it costs about log2(hi - lo) evaluations. Ties go to
    the smaller knob. Returns (knob, its FLOPs).
    """
    if lo > hi:
        raise ValueError(f'empty knob range [{lo}, {hi}]')
    cache: Dict[int, float] = {}

    def flops(k: int) -> float:
        if k not in cache:
            cache[k] = float(flops_at(k))
        return cache[k]

    increasing = flops(hi) >= flops(lo)
    a, b = lo, hi
    while b - a > 1:
        mid = (a + b) // 2
        if (flops(mid) < target) == increasing:
            a = mid
        else:
            b = mid
    best = min((a, b), key=lambda k: (abs(flops(k) - target), k))
    return best, flops(best)


def check_within(method: str, achieved: float, target: float,
                 tolerance: float) -> None:
    """Raise :class:`CalibrationError` if ``achieved`` misses ``target`` by
    more than the relative ``tolerance``."""
    miss = achieved / target - 1
    if abs(miss) > tolerance:
        raise CalibrationError(
            f'{method}: the nearest setting gives {achieved / 1e9:.4f} '
            f'GFLOPs, {100 * miss:+.1f}% from the target '
            f'{target / 1e9:.4f} (tolerance {100 * tolerance:.0f}%); the '
            'target is outside what this method reaches on this model')


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


# ---------------------------------------------------------------- report
COLUMNS = ('method', 'budget', 'setting', 'GFLOPs', '% of dense',
           'mIoU before FT', 'mIoU after FT', 'images/s')


def _cells(row: dict) -> Tuple[str, ...]:
    def miou(key):
        value = row.get(key)
        return '-' if value is None else f'{value:.2f}'

    budget = '-' if row.get('budget') is None else \
        f'{100 * row["budget"]:.0f}%'
    return (row['method'], budget, row.get('setting', '-'),
            f'{row["gflops"]:.4f}', f'{100 * row["fraction"]:.1f}',
            miou('miou_before'), miou('miou_after'),
            f'{row["images_per_s"]:.0f}')


def format_table(rows: Sequence[dict]) -> str:
    """Plain-text table (dense row first, then one per method and budget)."""
    body = [_cells(r) for r in rows]
    widths = [max(len(x[i]) for x in [COLUMNS] + body)
              for i in range(len(COLUMNS))]

    def line(cells):
        return '  '.join(c.ljust(w) if i in (0, 2) else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    return '\n'.join([line(COLUMNS), '  '.join('-' * w for w in widths)] +
                     [line(b) for b in body])


def format_markdown(rows: Sequence[dict]) -> str:
    lines = ['| ' + ' | '.join(COLUMNS) + ' |',
             '|---|---:|---|---:|---:|---:|---:|---:|']
    lines += ['| ' + ' | '.join(_cells(r)) + ' |' for r in rows]
    return '\n'.join(lines) + '\n'


def format_windows_markdown(rows: Sequence[dict]) -> str:
    """The merge windows of the static (Prune-and-Merge family) rows."""
    lines = ['| method | budget | mean token-to-centre distance (tokens) | '
             'largest window (tokens) | 3x3 neighbourhoods without a centre '
             '|', '|---|---:|---:|---:|---:|']
    for r in rows:
        if r.get('windows'):
            stats = r['windows']
            lines.append(f'| {r["method"]} | {100 * r["budget"]:.0f}% | '
                         f'{stats["mean_distance"]:.2f} | '
                         f'{stats["max_window"]} | '
                         f'{100 * stats["empty_3x3"]:.1f}% |')
    return '\n'.join(lines) + '\n'


def best_per_budget(rows: Sequence[dict], key: str = 'miou_after'
                    ) -> Dict[float, dict]:
    """The row with the highest ``key`` at every budget (ties: first)."""
    best: Dict[float, dict] = {}
    for row in rows:
        budget = row.get('budget')
        if budget is None or row.get(key) is None:
            continue
        if budget not in best or row[key] > best[budget][key]:
            best[budget] = row
    return best


def plot_study(rows: Sequence[dict], dense: dict, path, title: str,
               note: Optional[str] = None, dodge: float = 0.008) -> None:
    """mIoU against GFLOPs: one marker shape per method, hollow before and
    filled after fine-tuning, joined by a thin line; the dense model as a
    star with its mIoU as a dashed line. Methods sit at matched GFLOPs, so
    each is drawn ``dodge`` x dense GFLOPs apart from the next to stay
    legible (the figure says so; the table has the exact values).
    Written atomically."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    colours = plt.get_cmap('tab20')
    fig, ax = plt.subplots(figsize=(10, 5.6))
    names = list(dict.fromkeys(r['method'] for r in rows))
    for i, name in enumerate(names):
        method = METHODS[name]
        colour = colours(i)
        mine = [r for r in rows if r['method'] == name]
        shift = (i - (len(names) - 1) / 2) * dodge * dense['gflops']
        xs = [r['gflops'] + shift for r in mine]
        for x, r in zip(xs, mine):
            ax.plot([x, x], [r['miou_before'], r['miou_after']], '-',
                    color=colour, lw=1.0, alpha=0.7)
        ax.scatter(xs, [r['miou_before'] for r in mine],
                   marker=method.marker, s=60, facecolors='white',
                   edgecolors=[colour], linewidths=1.5, zorder=3)
        ax.scatter(xs, [r['miou_after'] for r in mine],
                   marker=method.marker, s=60, color=colour, zorder=3,
                   label=method.label)
    ax.scatter([dense['gflops']], [dense['miou']], marker='*', s=220,
               color='black', zorder=3,
               label=f'dense ({dense["miou"]:.2f} mIoU)')
    ax.axhline(dense['miou'], color='black', ls='--', lw=0.8)
    for budget in sorted({r['budget'] for r in rows}):
        ax.axvline(budget * dense['gflops'], color='grey', ls=':', lw=0.8)
        ax.annotate(f'{100 * budget:.0f}% of dense',
                    (budget * dense['gflops'], 1.0),
                    xycoords=('data', 'axes fraction'),
                    xytext=(0, 3), textcoords='offset points',
                    fontsize=8, color='dimgrey', ha='center', va='bottom')
    ax.scatter([], [], marker='o', facecolors='white', edgecolors='grey',
               linewidths=1.5, label='hollow: before fine-tuning')
    ax.scatter([], [], marker='o', color='grey',
               label='filled: after distillation')
    ax.set_xlabel('GFLOPs per image (encoder + decoder, counted)')
    ax.set_ylabel('mIoU (%)')
    ax.set_title(title, fontsize=10, pad=16)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0),
              framealpha=0.9)
    text = (f'Methods at one budget are spread sideways by '
            f'{100 * dodge:g}% of the dense GFLOPs each for legibility; '
            'exact GFLOPs are in the table.')
    fig.text(0.01, 0.01, f'{note} {text}' if note else text, fontsize=7,
             color='dimgrey')
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    save_figure(fig, path, dpi=130)
    plt.close(fig)
