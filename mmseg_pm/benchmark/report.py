"""Ratios, target checks and the written results (table, JSON, markdown,
PNG), each stamped with the machine they were measured on."""
from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from mmseg_pm.apis import write_atomic

# The targets (ViT-S Segmenter, 512x512, 2 CPU threads).
MIN_EFFICIENCY = 0.95
MIN_SPARSE_OVER_DENSE = 1.2


def cpu_model() -> str:
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict:
    """Where and when: CPU, cores, threads, load, device, versions, date."""
    import mmseg
    info = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec='seconds'),
        cpu=cpu_model(),
        cpu_cores=os.cpu_count(),
        cpu_cores_usable=len(os.sched_getaffinity(0))
        if hasattr(os, 'sched_getaffinity') else os.cpu_count(),
        threads=torch.get_num_threads(),
        load_average=[round(v, 2) for v in os.getloadavg()],
        device=device,
        torch=torch.__version__,
        mmseg=mmseg.__version__,
        python=platform.python_version(),
    )
    if device.startswith('cuda'):
        info['gpu'] = torch.cuda.get_device_name(device)
    return info


# ----------------------------------------------------------------------
# ratios
def reference_row(rows: Sequence[dict], row: dict,
                  variant: str) -> Optional[dict]:
    """The ``variant`` row of ``row``'s model, part and dtype."""
    for ref in rows:
        if (ref['variant'] == variant and ref['model'] == row['model']
                and ref['part'] == row['part'] and ref['dtype'] == row['dtype']
                and ref.get('img_size') == row.get('img_size')):
            return ref
    return None


def ratios(row: dict, ref: dict) -> dict:
    """Speed-up, FLOPs ratio and efficiency of ``row`` against ``ref``.

    efficiency = speed-up / (ref GFLOPs / row GFLOPs): 1 means the time
    saved is exactly the FLOPs saved.
    """
    flops_ratio = row['gflops'] / ref['gflops']
    out = dict(reference=ref['variant'], flops_ratio=flops_ratio,
               speedup={}, efficiency={})
    for batch, t in row['timing'].items():
        if batch in ref['timing']:
            speedup = t['images_per_s'] / ref['timing'][batch]['images_per_s']
            out['speedup'][batch] = speedup
            out['efficiency'][batch] = speedup * flops_ratio
    return out


def add_ratios(rows: List[dict]) -> None:
    """``vs_mmseg`` (the issue's reference) and ``vs_off`` (same code,
    compression off: the overhead of compressing) on every row."""
    for row in rows:
        for variant in ('mmseg', 'off'):
            ref = reference_row(rows, row, variant)
            row[f'vs_{variant}'] = None if ref is None else ratios(row, ref)


def check_targets(rows: Sequence[dict]) -> List[dict]:
    """The issue's targets, one entry per (row, batch) they apply to."""
    checks = []

    def add(name, value, target, row, batch=None, strict=False):
        ok = value is not None and (value > target if strict
                                    else value >= target)
        checks.append(dict(check=name, model=row['model'], part=row['part'],
                           dtype=row['dtype'], row=row['label'], batch=batch,
                           value=value, target=target, strict=strict,
                           ok=bool(ok)))

    for row in rows:
        if row.get('img_size') is not None:
            continue
        if row['variant'] == 'sparse':
            for ref in ('mmseg', 'off'):
                r = row.get(f'vs_{ref}')
                for batch, eff in (r or {}).get('efficiency', {}).items():
                    add(f'efficiency vs {ref}', eff, MIN_EFFICIENCY, row,
                        batch)
            dense = next((d for d in rows if d['variant'] == 'dense'
                          and d['keep_rate'] == row['keep_rate']
                          and d['model'] == row['model']
                          and d['part'] == row['part']
                          and d['dtype'] == row['dtype']
                          and d.get('img_size') is None), None)
            if dense is not None:
                for batch, t in row['timing'].items():
                    if batch in dense['timing']:
                        add('sparse / dense-matrix images/s',
                            t['images_per_s'] /
                            dense['timing'][batch]['images_per_s'],
                            MIN_SPARSE_OVER_DENSE, row, batch)
            mem = row.get('memory') or {}
            for kind in ('inference', 'train'):
                for ref in ('mmseg', 'off'):
                    theirs = ((reference_row(rows, row, ref) or {}).get(
                        'memory') or {}).get(kind)
                    if mem.get(kind) and theirs:
                        add(f'peak memory {kind}: {ref} / compressed',
                            theirs / mem[kind], 1.0, row, mem.get('batch'),
                            strict=True)
        if row['variant'] == 'off':
            r = row.get('vs_mmseg')
            for batch, s in (r or {}).get('speedup', {}).items():
                add('compression off / mmseg images/s', s, 1.0, row, batch)
    return checks


# ----------------------------------------------------------------------
# text
def _fmt(value, spec='.2f', missing='-'):
    return missing if value is None else format(value, spec)


def _mb(nbytes):
    return None if nbytes is None else nbytes / 2**20


def _token_range(tokens) -> str:
    """'fewest-most' tokens a block runs on."""
    if not tokens:
        return '-'
    return f'{min(tokens)}-{max(tokens)}' if min(tokens) != max(tokens) \
        else str(tokens[0])


def table_rows(rows: Sequence[dict], batches: Sequence[int],
               memory: bool = True) -> List[list]:
    """One line per row: the columns of :func:`table_header`."""
    lines = []
    for row in rows:
        line = [row['model'], row['part'], row['dtype'], row['label'],
                _token_range(row.get('tokens_per_layer')),
                _fmt(row['params'] / 1e6), _fmt(row['gflops'], '.4g'),
                _fmt(row.get('backbone_flops_deviation_pct'), '+.2f')]
        for b in batches:
            t = row['timing'].get(b)
            line += [_fmt(t and t['latency_ms'], '.1f'),
                     _fmt(t and t['images_per_s'], '.3f')]
        for ref in ('vs_mmseg', 'vs_off'):
            r = row.get(ref) or {}
            line.append(_fmt(r.get('flops_ratio'), '.3f'))
            for b in batches:
                line.append(_fmt(r.get('speedup', {}).get(b), '.3f') + ' / ' +
                            _fmt(r.get('efficiency', {}).get(b), '.3f'))
        if memory:
            mem = row.get('memory') or {}
            line += [_fmt(_mb(mem.get('inference')), '.1f'),
                     _fmt(_mb(mem.get('train')), '.1f')]
        lines.append(line)
    return lines


def table_header(batches: Sequence[int], memory_batch) -> List[str]:
    head = ['model', 'part', 'dtype', 'row', 'tokens/block', 'params M',
            'GFLOPs', 'analytic dev %']
    for b in batches:
        head += [f'b{b} ms', f'b{b} img/s']
    for ref in ('mmseg', 'off'):
        head.append(f'FLOPs ratio vs {ref}')
        head += [f'b{b} speed-up / eff vs {ref}' for b in batches]
    if memory_batch is not None:
        head += [f'peak infer MB (b{memory_batch})',
                 f'peak train MB (b{memory_batch})']
    return head


def text_table(head: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(head, *lines)]
    fmt = '  '.join(f'{{:<{w}}}' for w in widths)
    out = [fmt.format(*head), '  '.join('-' * w for w in widths)]
    out += [fmt.format(*map(str, line)) for line in lines]
    return '\n'.join(out)


def markdown_table(head: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    out = ['| ' + ' | '.join(head) + ' |',
           '|' + '|'.join('---' for _ in head) + '|']
    out += ['| ' + ' | '.join(map(str, line)) + ' |' for line in lines]
    return '\n'.join(out)


def scale_lines(rows: Sequence[dict]) -> List[list]:
    lines = []
    for row in rows:
        t = next(iter(row['timing'].values()))
        r = row.get('vs_off') or {}
        speedup = next(iter(r.get('speedup', {}).values()), None)
        eff = next(iter(r.get('efficiency', {}).values()), None)
        lines.append([row['model'], f"{row['img_size'][0]}x"
                      f"{row['img_size'][1]}", row['label'],
                      _token_range(row['tokens_per_layer']),
                      _fmt(row['gflops'], '.4g'), _fmt(t['latency_ms'], '.1f'),
                      _fmt(t['images_per_s'], '.3f'),
                      _fmt(r.get('flops_ratio'), '.3f'),
                      _fmt(speedup, '.3f'), _fmt(eff, '.3f')])
    return lines


SCALE_HEAD = ['model', 'input', 'row', 'tokens', 'GFLOPs', 'b1 ms',
              'b1 img/s', 'FLOPs ratio vs off', 'speed-up vs off',
              'efficiency vs off']


def check_lines(checks: Sequence[dict]) -> List[list]:
    return [[c['check'], c['model'], c['part'], c['dtype'], c['row'],
             str(c['batch']), _fmt(c['value'], '.3f'),
             f"{'>' if c['strict'] else '>='} {c['target']:g}",
             'PASS' if c['ok'] else 'MISS'] for c in checks]


CHECK_HEAD = ['target', 'model', 'part', 'dtype', 'row', 'batch', 'value',
              'target value', 'result']


def describe(results: dict) -> str:
    m = results['machine']
    s = results['settings']
    return (f"{m['date']}  device {m['device']}"
            f"{' (' + m['gpu'] + ')' if m.get('gpu') else ''}  cpu {m['cpu']}"
            f" ({m['cpu_cores_usable']}/{m['cpu_cores']} cores usable)  "
            f"threads {m['threads']}  torch {m['torch']}  mmseg "
            f"{m['mmseg']}  load average at start {m['load_average']}, at "
            f"end {results.get('load_average_end')}\n"
            f"timing: {s['warmup']} warm-up + {s['repeats']} interleaved "
            'repeats per row, median latency (images/s = batch / median); '
            'GFLOPs per image counted from what runs (count_flops), '
            "'analytic dev' = counted backbone FLOPs vs vit_flops + "
            'merge/reconstruct; efficiency = speed-up / FLOPs reduction '
            'factor; peak memory = most tensor memory held above the model '
            'and input during one inference / train step (forward + '
            'backward).')


def render_text(results: dict) -> str:
    s = results['settings']
    parts = [describe(results), '',
             text_table(table_header(s['batch_sizes'], s['memory_batch']),
                        table_rows(results['rows'], s['batch_sizes'],
                                   s['memory_batch'] is not None))]
    if results.get('scale'):
        parts += ['', 'cost against input size (backbone, batch 1):',
                  text_table(SCALE_HEAD, scale_lines(results['scale']))]
    if results.get('checks'):
        parts += ['', 'targets:', text_table(CHECK_HEAD,
                                            check_lines(results['checks']))]
    if results.get('notes'):
        parts += ['', 'notes:'] + [f'- {n}' for n in results['notes']]
    return '\n'.join(parts)


def render_markdown(results: dict) -> str:
    s = results['settings']
    parts = ['# Benchmark: ' + ', '.join(s['configs']), '',
             describe(results), '',
             markdown_table(table_header(s['batch_sizes'], s['memory_batch']),
                            table_rows(results['rows'], s['batch_sizes'],
                                       s['memory_batch'] is not None))]
    if results.get('scale'):
        parts += ['', '## Cost against input size (backbone, batch 1)', '',
                  markdown_table(SCALE_HEAD, scale_lines(results['scale']))]
    if results.get('checks'):
        parts += ['', '## Targets', '',
                  markdown_table(CHECK_HEAD, check_lines(results['checks']))]
    if results.get('notes'):
        parts += ['', '## Notes', ''] + [f'- {n}' for n in results['notes']]
    return '\n'.join(parts) + '\n'


# ----------------------------------------------------------------------
# files
def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def render_json(results: dict) -> str:
    return json.dumps(_jsonable(results), indent=2) + '\n'


def render_plot(results: dict) -> bytes:
    """PNG: images/s and GFLOPs against keep rate (dense rows at 1.0),
    and latency against input size when measured."""
    import io

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = results['rows']
    panels = 3 if results.get('scale') else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.5))
    several = len(results['settings']['configs']) > 1
    # images/s: one colour per (model, part, dtype, batch); compressed rows
    # as lines from the compression-off point at keep rate 1.0, mmseg's
    # dense model as a square at 1.0
    groups = sorted({(r['model'], r['part'], r['dtype'], b)
                     for r in rows for b in r['timing']}, key=str)
    colours = {g: plt.cm.tab10(i % 10) for i, g in enumerate(groups)}
    for group in groups:
        model, part, dtype, batch = group
        mine = [r for r in rows if (r['model'], r['part'], r['dtype']) ==
                group[:3] and batch in r['timing']]
        ips = {(r['variant'], r['keep_rate']): r['timing'][batch][
            'images_per_s'] for r in mine}
        name = f'{model}: ' if several else ''
        name += f'{part} {dtype} b{batch}'
        for variant, style in (('sparse', '-o'), ('dense', '--x')):
            points = sorted((k, v) for (var, k), v in ips.items()
                            if var == variant)
            if ('off', None) in ips:
                points.append((1.0, ips['off', None]))
            if any(var == variant for var, _ in ips):
                axes[0].plot(*zip(*points), style, color=colours[group],
                             label=f'{name} {variant}')
        if ('mmseg', None) in ips:
            axes[0].plot([1.0], [ips['mmseg', None]], 's',
                         color=colours[group], label=f'{name} mmseg')
    axes[0].set_yscale('log')
    axes[0].set(xlabel='keep rate (1.0 = dense: off / mmseg)',
                ylabel='images / s (log)', title='throughput')
    axes[0].legend(fontsize=6)
    part, dtype = rows[0]['part'], rows[0]['dtype']
    for model in sorted({r['model'] for r in rows}):
        mine = {(r['variant'], r['keep_rate']): r['gflops'] for r in rows
                if (r['model'], r['part'], r['dtype']) == (model, part, dtype)}
        for variant, style in (('sparse', '-o'), ('dense', '--x')):
            points = sorted((k, v) for (var, k), v in mine.items()
                            if var == variant)
            if not points:
                continue
            if ('off', None) in mine:
                points.append((1.0, mine['off', None]))
            axes[1].plot(*zip(*points), style,
                         label=(f'{model}: ' if several else '') + variant)
        if ('mmseg', None) in mine:
            axes[1].plot([1.0], [mine['mmseg', None]], 's',
                         label=(f'{model}: ' if several else '') + 'mmseg')
    axes[1].set(xlabel='keep rate (1.0 = dense: off / mmseg)',
                ylabel=f'GFLOPs / image ({rows[0]["part"]})',
                title='counted FLOPs')
    axes[1].legend(fontsize=6)
    if panels == 3:
        by_label: Dict[str, list] = {}
        for row in results['scale']:
            t = next(iter(row['timing'].values()))
            by_label.setdefault(row['label'], []).append(
                (row['img_size'][0], t['latency_ms']))
        for label, points in sorted(by_label.items()):
            points.sort()
            axes[2].plot(*zip(*points), '-o', label=label)
        axes[2].set(xlabel='input side (pixels)', ylabel='latency ms (b1)',
                    title='backbone cost against input size')
        axes[2].legend(fontsize=6)
    m = results['machine']
    fig.suptitle(f"{m['device']} {m.get('gpu') or m['cpu']}, "
                 f"{m['threads']} threads, torch {m['torch']}, {m['date']}",
                 fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=110)
    plt.close(fig)
    return buf.getvalue()


def result_paths(out_dir: Path, name: str,
                 plot: bool = True) -> Dict[str, Path]:
    """The files :func:`write_results` writes."""
    out_dir = Path(out_dir)
    paths = {'json': out_dir / f'{name}.json', 'md': out_dir / f'{name}.md'}
    if plot:
        paths['png'] = out_dir / f'{name}.png'
    return paths


def write_results(results: dict, out_dir: Path, name: str,
                  plot: bool = True) -> Dict[str, Path]:
    """Write ``name``.json / .md / .png under ``out_dir`` (atomically)."""
    paths = result_paths(out_dir, name, plot)
    write_atomic(paths['json'], render_json(results))
    write_atomic(paths['md'], render_markdown(results))
    if plot:
        write_atomic(paths['png'], render_plot(results))
    return paths
