"""The study's table (text and markdown), its merge-window table, the best
row per budget and the plot of mIoU against GFLOPs."""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

from mmseg_pm.apis.knobs import METHODS
from mmseg_pm.utils.outputs import save_figure
from mmseg_pm.utils.tables import markdown_table, text_table


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


# the setting and the method's name read left-aligned, numbers right
_RIGHT = (1, 3, 4, 5, 6, 7)


def dense_row(dense: dict) -> dict:
    """The table's dense row from the ``dense`` entry of results.json
    (``miou``, ``gflops``, ``images_per_s``)."""
    return dict(method='dense', budget=None, setting='no compression',
                gflops=dense['gflops'], fraction=1.0,
                miou_before=dense['miou'], miou_after=None,
                images_per_s=dense['images_per_s'])


def format_table(rows: Sequence[dict]) -> str:
    """Plain-text table (dense row first, then one per method and budget)."""
    return text_table(COLUMNS, [_cells(r) for r in rows], _RIGHT)


def format_markdown(rows: Sequence[dict]) -> str:
    return markdown_table(COLUMNS, [_cells(r) for r in rows], _RIGHT) + '\n'


WINDOW_COLUMNS = ('method', 'budget',
                  'mean token-to-centre distance (tokens)',
                  'largest window (tokens)',
                  '3x3 neighbourhoods without a centre',
                  'tokens outside their static window')


def format_windows_markdown(rows: Sequence[dict]) -> str:
    """The merge windows of the Prune-and-Merge family's rows (those with
    content-aware windows: as the validation images formed them)."""
    lines = [(r['method'], f'{100 * r["budget"]:.0f}%',
              f'{r["windows"]["mean_distance"]:.2f}',
              str(r['windows']['max_window']),
              f'{100 * r["windows"]["empty_3x3"]:.1f}%',
              f'{100 * r["windows"]["moved"]:.1f}%'
              if 'moved' in r['windows'] else '-')
             for r in rows if r.get('windows')]
    return markdown_table(WINDOW_COLUMNS, lines, (1, 2, 3, 4, 5)) + '\n'


def best_per_budget(rows: Sequence[dict], key: str = 'miou_after',
                    tolerance: float = 0.02) -> Dict[float, dict]:
    """The row with the highest ``key`` at every budget (ties: first), of
    the rows within ``tolerance`` of it (a schedule-knob method's nearest
    setting may sit far from the budget: it is not the best *at* it)."""
    best: Dict[float, dict] = {}
    for row in rows:
        budget = row.get('budget')
        if budget is None or row.get(key) is None:
            continue
        if abs(row.get('fraction', budget) / budget - 1) > tolerance:
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
