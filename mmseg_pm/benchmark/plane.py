"""The speed-quality plane: the study's mIoU of every method (before and
after the same fine-tune) against the measured speed-up of the same method
at the same fraction of the GFLOPs on a real-size segmentor.

Two result files meet here: the quality study's (``tools/study.py``: the
proxy's mIoU at each GFLOPs budget) and a benchmark's
(``tools/benchmark.py`` at the keep rates whose PM rows sit at those
budgets: each method's images/s against compression off, eager PyTorch).
A study variant and a benchmark row are the same method when the
variant's registered method is the row's peer, or, for Prune and Merge,
when the variant's reconstruct and window assignment are the row's
(placement moves centres, not their count: the same speed). A study row
takes its method's benchmark row nearest its own fraction of the dense
GFLOPs (within a gap), so a method whose schedule sits far from a budget
(MPM) is compared where it is, and the table says where that is.
"""
from __future__ import annotations

import io
from typing import Dict, List, Optional, Sequence

from mmseg_pm.apis.knobs import METHODS, Method
from mmseg_pm.compression.registry import DEFAULT_METHOD
from mmseg_pm.compression.search import DEFAULT_PLACEMENT

from .variants import PEER_VARIANTS, REFERENCE, reference_variants

SETTINGS = ('impl', 'reconstruct', 'assign')


def benchmark_variant(method: Method) -> Optional[str]:
    """The benchmark row (``--variants`` name) that runs the study
    variant's model, or None."""
    if method.method != DEFAULT_METHOD:
        return method.method if method.method in PEER_VARIANTS else None
    if method.placement != DEFAULT_PLACEMENT or method.ranking or set(
            method.options) - set(SETTINGS):
        return None  # one study variant per row: the default placement,
        # nothing set that the rows do not set (a neighbourhood, a rule)
    reference = reference_variants()[REFERENCE]
    for name, settings in reference_variants().items():
        if all(method.option(k) == settings.get(k, reference[k])
               for k in SETTINGS):
            return name
    return None


def speedups(benchmark: dict) -> Dict[str, Dict[float, dict]]:
    """variant -> {its fraction of the dense GFLOPs: {batch: speed-up}} of
    the benchmark's eager segmentor rows."""
    rows = [r for r in benchmark['rows'] if r['backend'] == 'eager'
            and r['part'] == 'segmentor' and r.get('dtype', 'fp32') == 'fp32'
            and r.get('vs_off') and not r.get('unreachable')]
    dense = next(r['gflops'] for r in rows if r['variant'] == 'off')
    out: Dict[str, Dict[float, dict]] = {}
    for r in rows:
        if r['keep_rate'] is not None:
            out.setdefault(r['variant'], {})[r['gflops'] / dense] = {
                int(b): s for b, s in r['vs_off']['speedup'].items()}
    return out


def plane_points(study_rows: Sequence[dict], benchmark: dict,
                 max_gap: float = 0.05) -> List[dict]:
    """One point per study row whose method has a benchmark row within
    ``max_gap`` of its GFLOPs fraction: label, budget, mIoU before and
    after fine-tuning, both fractions and the speed-up per batch."""
    speed = speedups(benchmark)
    points = {}
    for row in study_rows:
        method = METHODS.get(row['method'])
        variant = benchmark_variant(method) if method else None
        if variant not in speed:
            continue
        fraction = min(speed[variant], key=lambda f: abs(f - row['fraction']))
        if abs(fraction - row['fraction']) > max_gap:
            continue
        # a schedule's nearest setting can serve several budgets: once,
        # at the budget nearest to it
        key = (row['method'], round(row['fraction'], 4))
        if key in points and abs(points[key]['budget'] - row['fraction']) \
                <= abs(row['budget'] - row['fraction']):
            continue
        points[key] = dict(
            method=row['method'], label=method.label, marker=method.marker,
            budget=row['budget'], study_fraction=row['fraction'],
            miou_before=row['miou_before'], miou_after=row['miou_after'],
            speed_fraction=fraction, speedup=speed[variant][fraction])
    return list(points.values())


def plane_table(points: Sequence[dict], dense_miou: float) -> str:
    """Markdown: per budget, every method's mIoU before / after and its
    speed-up at batch 1 and 8, best of each column in bold."""
    batches = sorted({b for p in points for b in p['speedup']})
    head = ('| budget | method | GFLOPs (proxy / ViT-S) | mIoU before FT | '
            'after FT | ' + ' | '.join(f'speed-up b{b}' for b in batches)
            + ' |')
    lines = [head, '|' + '---|' * (5 + len(batches))]
    for budget in sorted({p['budget'] for p in points}, reverse=True):
        group = [p for p in points if p['budget'] == budget]
        best = {key: max(p[key] for p in group)
                for key in ('miou_before', 'miou_after')}
        fastest = {b: max(p['speedup'].get(b, 0) for p in group)
                   for b in batches}

        def cell(value, top, fmt):
            text = fmt.format(value)
            return f'**{text}**' if value == top else text

        for p in sorted(group, key=lambda p: -p['miou_after']):
            lines.append(
                f'| {100 * budget:.0f} % | {p["label"]} | '
                f'{100 * p["study_fraction"]:.1f} % / '
                f'{100 * p["speed_fraction"]:.1f} % | '
                + cell(p['miou_before'], best['miou_before'], '{:.2f}')
                + ' | ' + cell(p['miou_after'], best['miou_after'], '{:.2f}')
                + ' | ' + ' | '.join(
                    cell(p['speedup'][b], fastest[b], '{:.2f}x')
                    if b in p['speedup'] else '-' for b in batches) + ' |')
    lines.append('')
    lines.append(f'Dense: {dense_miou:.2f} mIoU, speed-up 1.00x.')
    return '\n'.join(lines)


def pareto(points: Sequence[dict], batch: int, key: str) -> List[dict]:
    """The points no other point beats in both speed-up at ``batch`` and
    ``key`` (mIoU before or after), fastest first."""
    ranked = sorted((p for p in points if batch in p['speedup']),
                    key=lambda p: (-p['speedup'][batch], -p[key]))
    front, best = [], float('-inf')
    for p in ranked:
        if p[key] > best:
            front.append(p)
            best = p[key]
    return front


def verdict(points: Sequence[dict]) -> List[str]:
    """In words: which method is best at each speed (the Pareto front of
    speed-up and mIoU, before and after fine-tuning, per batch size), and
    its margin over the best other method at least as fast (within 3 %)."""
    lines = []
    batches = sorted({b for p in points for b in p['speedup']})
    for batch in batches:
        for key, what in (('miou_after', 'after fine-tuning'),
                          ('miou_before', 'before fine-tuning')):
            front = pareto(points, batch, key)
            steps = []
            for p in front:
                rivals = [q for q in points if q['label'] != p['label']
                          and q['speedup'].get(batch, 0) >= p['speedup'][
                              batch] * 0.97]
                lead = ', no other method within 3 % of its speed'
                if rivals:
                    runner = max(rivals, key=lambda q: q[key])
                    lead = (f', {p[key] - runner[key]:+.2f} mIoU against the '
                            'best other method at least as fast (within '
                            f'3 %): {runner["label"]} at '
                            f'{100 * runner["budget"]:.0f} % '
                            f'({runner["speedup"][batch]:.2f}x)')
                steps.append(f'{p["label"]} at {100 * p["budget"]:.0f} % '
                             f'({p["speedup"][batch]:.2f}x, {p[key]:.2f}'
                             f'{lead})')
            lines.append(f'Batch {batch}, {what}, best at each speed '
                         '(fastest first): ' + '; '.join(steps) + '.')
    return lines


def plane_plot(points: Sequence[dict], dense_miou: float) -> bytes:
    """PNG: mIoU (hollow: before, filled: after fine-tuning) against the
    speed-up, one panel per batch size, one line per method."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    batches = sorted({b for p in points for b in p['speedup']})
    fig, axes = plt.subplots(1, len(batches), figsize=(6.5 * len(batches),
                                                        5), squeeze=False)
    labels = list(dict.fromkeys(p['label'] for p in points))
    colours = plt.get_cmap('tab10')
    for ax, batch in zip(axes[0], batches):
        for i, label in enumerate(labels):
            mine = sorted((p for p in points if p['label'] == label
                           and batch in p['speedup']),
                          key=lambda p: p['speedup'][batch])
            if not mine:
                continue
            xs = [p['speedup'][batch] for p in mine]
            marker = mine[0]['marker']
            ax.plot(xs, [p['miou_after'] for p in mine], marker=marker,
                    color=colours(i % 10), label=label)
            ax.plot(xs, [p['miou_before'] for p in mine], marker=marker,
                    color=colours(i % 10), linestyle=':',
                    markerfacecolor='none')
        ax.axhline(dense_miou, color='grey', linewidth=0.8)
        ax.set_xlabel(f'speed-up over dense, ViT-S 512, batch {batch} '
                      '(measured, CPU)')
        ax.set_ylabel('mIoU on the proxy (dotted: before FT)')
        ax.set_title(f'batch {batch}')
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc='lower left')
    fig.suptitle("the proxy's quality against ViT-S's speed, at the same "
                 'fraction of the GFLOPs')
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=110)
    plt.close(fig)
    return buffer.getvalue()
