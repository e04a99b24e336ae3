"""The benchmark's figure: images/s against GFLOPs per batch size, and
latency against input size when measured."""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

from mmseg_pm.compression.registry import method_specs

from .backends import COMPILE, CUDA_GRAPH, EAGER, ONNX
from .tables import summary_part


# marker and line style of each variant / runtime in the plot (each
# method's own marker for its rows)
VARIANT_MARKERS = {'mmseg': 's', 'off': '*', 'pm-pinv': 'D',
                   'pm-matrix': 'P', 'pm-static': 'o', 'config': 'X',
                   **{s.name: s.marker for s in method_specs()}}
BACKEND_LINES = {EAGER: '-', ONNX: '--', COMPILE: ':', CUDA_GRAPH: '-.'}


def plot_series(rows: Sequence[dict], batch) -> Dict[Tuple[str, str], list]:
    """(variant, backend) -> [(GFLOPs, images/s)] at ``batch``; every
    compressed series starts from the compression-off point of its
    runtime (the dense end of its curve)."""
    points: Dict[Tuple[str, str], list] = {}
    for row in rows:
        t = row['timing'].get(batch)
        if t is None or row.get('gflops') is None:
            continue
        key = (row['variant'], row.get('backend', EAGER))
        points.setdefault(key, []).append((row['gflops'],
                                           t['images_per_s']))
    for (variant, backend), pts in points.items():
        off = points.get(('off', backend))
        if variant not in ('off', 'mmseg', 'config') and off:
            pts.append(off[0])
        pts.sort()
    return points


def render_plot(results: dict) -> bytes:
    """PNG: images/s against GFLOPs per batch size (the summary's part and
    dtype; PyTorch solid, onnxruntime dashed, compiled dotted), and latency
    against input size when measured."""
    import io

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (matplotlib.ticker below)

    rows = results['rows']
    part, dtype = summary_part(rows)
    model = rows[0]['model']
    rows = [r for r in rows if (r['part'], r['dtype'], r['model']) ==
            (part, dtype, model) and r.get('img_size') is None]
    batches = results['settings']['batch_sizes']
    panels = len(batches) + bool(results.get('scale'))
    fig, axes = plt.subplots(1, panels, figsize=(5.8 * panels, 4.8),
                             squeeze=False)
    axes = axes[0]
    colours = {v: plt.cm.tab10(i) for i, v in enumerate(VARIANT_MARKERS)}
    for ax, batch in zip(axes, batches):
        for (variant, backend), pts in sorted(plot_series(rows,
                                                          batch).items()):
            name = variant if backend == EAGER else f'{variant} {backend}'
            ax.plot(*zip(*pts), BACKEND_LINES[backend],
                    marker=VARIANT_MARKERS.get(variant, 'o'),
                    color=colours.get(variant), label=name,
                    fillstyle='full' if backend == EAGER else 'none')
        ax.set_yscale('log')
        for axis in (ax.yaxis.set_major_formatter,
                     ax.yaxis.set_minor_formatter):
            axis(matplotlib.ticker.FormatStrFormatter('%g'))
        ax.set(xlabel=f'GFLOPs / image ({part}, counted)',
               ylabel='images / s (log)',
               title=f'{part} {dtype}, batch {batch}')
        ax.grid(alpha=0.3, which='both')
        ax.legend(fontsize=6)
    if results.get('scale'):
        by_label: Dict[str, list] = {}
        for row in results['scale']:
            t = next(iter(row['timing'].values()))
            by_label.setdefault(row['label'], []).append(
                (row['img_size'][0], t['latency_ms']))
        for label, points in sorted(by_label.items()):
            points.sort()
            axes[-1].plot(*zip(*points), '-o', label=label)
        axes[-1].set(xlabel='input side (pixels)', ylabel='latency ms (b1)',
                     title='backbone cost against input size')
        axes[-1].legend(fontsize=6)
    m = results['machine']
    fig.suptitle(f"{model}\n{m['device']} {m.get('gpu') or m['cpu']}, "
                 f"{m['threads']} threads, torch {m['torch']}, {m['date']}",
                 fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=110)
    plt.close(fig)
    return buf.getvalue()
