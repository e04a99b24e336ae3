"""Ratios, target checks and the written results (table, JSON, markdown,
PNG), each stamped with the machine they were measured on."""
from __future__ import annotations

import datetime
import json
import os
import platform
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from mmseg_pm.apis import write_atomic

from .backends import COMPILE, EAGER, ONNX
from .variants import PEER_NAMES, PEER_VARIANTS

# The issues' targets (ViT-S Segmenter, 512x512, 2 CPU threads).
MIN_EFFICIENCY = 0.95
MIN_SPARSE_OVER_DENSE = 1.2
MIN_RESIDUAL_OVER_PINV = 0.98
# rows at the GFLOPs of the PM row of their keep rate
MATCHED_TO_PM = PEER_VARIANTS + ('pm-pinv', )


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
    try:
        import onnxruntime
        info['onnxruntime'] = onnxruntime.__version__
    except ImportError:
        info['onnxruntime'] = None
    if device.startswith('cuda'):
        info['gpu'] = torch.cuda.get_device_name(device)
    return info


# ----------------------------------------------------------------------
# ratios
ANY = object()


def reference_row(rows: Sequence[dict], row: dict, variant: str,
                  backend: Optional[str] = None,
                  keep_rate=ANY) -> Optional[dict]:
    """The ``variant`` row of ``row``'s model, part, dtype and input size,
    in ``backend`` (default: ``row``'s) and, if given, at ``keep_rate``."""
    backend = backend or row.get('backend', EAGER)
    for ref in rows:
        if (ref['variant'] == variant and ref['model'] == row['model']
                and ref['part'] == row['part'] and ref['dtype'] == row['dtype']
                and ref.get('backend', EAGER) == backend
                and ref.get('img_size') == row.get('img_size')
                and (keep_rate is ANY or ref['keep_rate'] == keep_rate)
                and not ref.get('unreachable')):
            return ref
    return None


def ratios(row: dict, ref: Optional[dict]) -> Optional[dict]:
    """Speed-up, FLOPs ratio and efficiency of ``row`` against ``ref``.

    efficiency = speed-up / (ref GFLOPs / row GFLOPs): 1 means the time
    saved is exactly the FLOPs saved.
    """
    if ref is None or row.get('gflops') is None or not ref.get('gflops'):
        return None
    flops_ratio = row['gflops'] / ref['gflops']
    out = dict(reference=ref['label'], flops_ratio=flops_ratio,
               speedup={}, efficiency={})
    for batch, t in row['timing'].items():
        if batch in ref['timing']:
            speedup = t['images_per_s'] / ref['timing'][batch]['images_per_s']
            out['speedup'][batch] = speedup
            out['efficiency'][batch] = speedup * flops_ratio
    return out


def add_ratios(rows: List[dict]) -> None:
    """On every row: ``vs_mmseg`` and ``vs_off`` (the dense rows of the same
    runtime: mmseg is the issue's reference, compression off the same code
    uncompressed), ``vs_pm`` (peers and the pinv row against the PM row of
    their keep rate: the same GFLOPs) and ``vs_eager`` (an onnxruntime or
    compiled row against its PyTorch row)."""
    for row in rows:
        backend = row.get('backend', EAGER)
        for variant in ('mmseg', 'off'):
            row[f'vs_{variant}'] = ratios(row, reference_row(rows, row,
                                                             variant))
        row['vs_pm'] = None
        if row['variant'] in MATCHED_TO_PM:
            row['vs_pm'] = ratios(row, reference_row(
                rows, row, 'pm', keep_rate=row['keep_rate']))
        row['vs_eager'] = None if backend == EAGER else ratios(
            row, reference_row(rows, row, row['variant'], EAGER,
                               row['keep_rate']))


def check_targets(rows: Sequence[dict]) -> List[dict]:
    """The issues' targets, one entry per (row, batch) they apply to."""
    checks = []

    def add(name, value, target, row, batch=None, op='>='):
        ok = value is not None and {'>=': value >= target,
                                    '>': value > target,
                                    '<=': value <= target}[op]
        checks.append(dict(check=name, model=row['model'], part=row['part'],
                           dtype=row['dtype'], row=row['label'], batch=batch,
                           value=value, target=target, op=op, ok=bool(ok)))

    for row in rows:
        if row.get('img_size') is not None or row.get('unreachable'):
            continue
        backend = row.get('backend', EAGER)
        if row['variant'] == 'pm' and backend in (EAGER, ONNX):
            refs = ('mmseg', 'off') if backend == EAGER else ('off', )
            for ref in refs:
                r = row.get(f'vs_{ref}')
                for batch, eff in (r or {}).get('efficiency', {}).items():
                    add(f'efficiency vs {ref} ({backend})', eff,
                        MIN_EFFICIENCY, row, batch)
        if backend == COMPILE:
            for batch, c in row.get('compile', {}).items():
                add('graphs compiled on new data of the same shape',
                    c['recompiles_same_shape'], 0, row, batch, op='<=')
        if backend != EAGER:
            continue
        if row['variant'] in PEER_VARIANTS:
            for batch, s in ((row.get('vs_pm') or {}).get('speedup')
                             or {}).items():
                add(f'PM / {PEER_NAMES[row["variant"]]} images/s (same '
                    'GFLOPs)', 1 / s, 1.0, row, batch)
        if row['variant'] == 'pm-pinv':
            for batch, s in ((row.get('vs_pm') or {}).get('speedup')
                             or {}).items():
                add('PM residual / pinv images/s', 1 / s,
                    MIN_RESIDUAL_OVER_PINV, row, batch)
        if row['variant'] == 'pm':
            matrix = reference_row(rows, row, 'pm-matrix',
                                   keep_rate=row['keep_rate'])
            for batch, t in row['timing'].items():
                if matrix is not None and batch in matrix['timing']:
                    add('sparse / dense-matrix images/s',
                        t['images_per_s'] /
                        matrix['timing'][batch]['images_per_s'],
                        MIN_SPARSE_OVER_DENSE, row, batch)
            mem = row.get('memory') or {}
            for kind in ('inference', 'train'):
                for ref in ('mmseg', 'off'):
                    theirs = ((reference_row(rows, row, ref) or {}).get(
                        'memory') or {}).get(kind)
                    if mem.get(kind) and theirs:
                        add(f'peak memory {kind}: {ref} / compressed',
                            theirs / mem[kind], 1.0, row, mem.get('batch'),
                            op='>')
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


def _setting(row: dict) -> str:
    """A peer's calibrated knob, '-' for the others."""
    return (row.get('match') or {}).get('setting') or '-'


def _vs_pm(row: dict, batch) -> str:
    if row['variant'] == 'pm':
        return 'ref'
    r = row.get('vs_pm') or {}
    return _fmt(r.get('speedup', {}).get(batch), '.3f')


def table_rows(rows: Sequence[dict], batches: Sequence[int],
               memory: bool = True) -> List[list]:
    """One line per row: the columns of :func:`table_header`."""
    lines = []
    for row in rows:
        pm = row.get('vs_pm') or {}
        line = [row['model'], row['part'], row['dtype'], row['label'],
                _setting(row), _token_range(row.get('tokens_per_layer')),
                _fmt(row['params'] and row['params'] / 1e6),
                _fmt(row['gflops'], '.4g'),
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
        line.append(_fmt(pm.get('flops_ratio') and
                         100 * (pm['flops_ratio'] - 1), '+.2f'))
        line += [_vs_pm(row, b) for b in batches]
        if memory:
            mem = row.get('memory') or {}
            line += [_fmt(_mb(mem.get('inference')), '.1f'),
                     _fmt(_mb(mem.get('train')), '.1f')]
        lines.append(line)
    return lines


def table_header(batches: Sequence[int], memory_batch) -> List[str]:
    head = ['model', 'part', 'dtype', 'row', 'setting', 'tokens/block',
            'params M', 'GFLOPs', 'analytic dev %']
    for b in batches:
        head += [f'b{b} ms', f'b{b} img/s']
    for ref in ('mmseg', 'off'):
        head.append(f'FLOPs ratio vs {ref}')
        head += [f'b{b} speed-up / eff vs {ref}' for b in batches]
    head.append('GFLOPs vs PM %')
    head += [f'b{b} img/s vs PM at the same GFLOPs' for b in batches]
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


def summary_part(rows: Sequence[dict]) -> Tuple[str, str]:
    """(part, dtype) of the summary: the segmentor (what a user runs) when
    measured, and the first dtype."""
    parts = [r['part'] for r in rows]
    part = 'segmentor' if 'segmentor' in parts else parts[0]
    return part, rows[0]['dtype']


def exportable(row: dict) -> str:
    """Whether the row's model exported to ONNX in this run, and if not,
    the exporter's error."""
    if row.get('backend', EAGER) == ONNX:
        return 'yes (this row)'
    info = row.get('onnx')
    if info is None:
        return 'cannot reach' if row.get('unreachable') else 'not tried'
    if info['exported']:
        return 'yes'
    return f"no: {info['error']} ({short_reason(info['reason'])})"


def short_reason(reason: str) -> str:
    """'no ONNX function for aten.sort.stable' from the exporter's line,
    else its first 80 characters."""
    found = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)'"
                      r"(?:, overload='([^']+)')?", reason)
    if found:
        op = '.'.join(p for p in found.groups() if p)
        return f'no ONNX function for {op}'
    return reason[:80]


def summary_lines(rows: Sequence[dict], batches: Sequence[int]
                  ) -> List[list]:
    """The ten-second table: method, GFLOPs, images/s, speed-up against
    compression off in the same runtime, exportable."""
    part, dtype = summary_part(rows)
    model = rows[0]['model']
    lines = []
    for row in rows:
        if (row['part'], row['dtype'], row['model']) != (part, dtype, model) \
                or row.get('img_size') is not None:
            continue
        off = row.get('vs_off') or {}
        line = [row['label'], _fmt(row['gflops'], '.3g')]
        line += [_fmt((row['timing'].get(b) or {}).get('images_per_s'),
                      '.2f') for b in batches]
        line.append(' / '.join(_fmt(off.get('speedup', {}).get(b))
                               for b in batches))
        line.append(exportable(row))
        lines.append(line)
    return lines


def summary_header(rows: Sequence[dict], batches: Sequence[int]
                   ) -> List[str]:
    part, dtype = summary_part(rows)
    return ([f'{part}, {dtype}', 'GFLOPs'] +
            [f'b{b} img/s' for b in batches] +
            [f'vs dense (same runtime) {" / ".join(f"b{b}" for b in batches)}',
             'exports to ONNX'])


def runtime_lines(rows: Sequence[dict], batches: Sequence[int]
                  ) -> List[list]:
    """Exported and compiled rows: their one-off cost, parity and speed
    against their PyTorch row."""
    lines = []
    for row in rows:
        backend = row.get('backend', EAGER)
        if backend == EAGER:
            continue
        eager = row.get('vs_eager') or {}
        if backend == ONNX:
            onnx = row['onnx']
            cost = f"export {onnx['export_s']:.1f} s"
            detail = f"max abs diff {onnx['max_abs_diff']:.2g}"
        else:
            comp = row.get('compile', {})
            cost = ', '.join(f"b{b} {c['first_call_s']:.1f} s"
                             for b, c in comp.items())
            detail = ', '.join(
                f"b{b}: {c['graphs']} graph(s), "
                f"{c['recompiles_same_shape']} on new data"
                for b, c in comp.items())
        lines.append([row['model'], row['part'], row['dtype'], row['label'],
                      cost, detail] +
                     [_fmt(eager.get('speedup', {}).get(b), '.3f')
                      for b in batches])
    return lines


def runtime_header(batches: Sequence[int]) -> List[str]:
    return (['model', 'part', 'dtype', 'row',
             'one-off cost (export / compile = first call)',
             'parity / graphs compiled'] +
            [f'b{b} speed-up vs PyTorch eager' for b in batches])


def export_lines(rows: Sequence[dict]) -> List[list]:
    """One line per (model, part, variant) export that was tried."""
    seen, lines = set(), []
    for row in rows:
        info = row.get('onnx')
        key = (row['model'], row['part'], row['variant'])
        if info is None or row.get('backend', EAGER) != EAGER or key in seen:
            continue
        seen.add(key)
        lines.append([row['model'], row['part'], row['variant'],
                      'yes' if info['exported'] else 'no',
                      info.get('error', '-'), info.get('reason', '-')])
    return lines


EXPORT_HEAD = ['model', 'part', 'variant', 'exported', 'error class',
               'exporter says']


def profile_lines(rows: Sequence[dict], top: int = 5) -> List[list]:
    lines = []
    for row in rows:
        for batch, ops in (row.get('profile') or {}).items():
            lines.append([row['model'], row['part'], row['label'],
                          str(batch), ', '.join(
                              f"{o['op']} {100 * o['share']:.0f}%"
                              for o in ops[:top])])
    return lines


PROFILE_HEAD = ['model', 'part', 'row', 'batch',
                'top operators by self time (share of the call)']


def scale_lines(rows: Sequence[dict]) -> List[list]:
    lines = []
    for row in rows:
        t = next(iter(row['timing'].values()), None)
        r = row.get('vs_off') or {}
        speedup = next(iter(r.get('speedup', {}).values()), None)
        eff = next(iter(r.get('efficiency', {}).values()), None)
        lines.append([row['model'], f"{row['img_size'][0]}x"
                      f"{row['img_size'][1]}", row['label'],
                      _token_range(row['tokens_per_layer']),
                      _fmt(row['gflops'], '.4g'),
                      _fmt(t and t['latency_ms'], '.1f'),
                      _fmt(t and t['images_per_s'], '.3f'),
                      _fmt(r.get('flops_ratio'), '.3f'),
                      _fmt(speedup, '.3f'), _fmt(eff, '.3f')])
    return lines


SCALE_HEAD = ['model', 'input', 'row', 'tokens', 'GFLOPs', 'b1 ms',
              'b1 img/s', 'FLOPs ratio vs off', 'speed-up vs off',
              'efficiency vs off']


def scaling_lines(rows: Sequence[dict]) -> List[list]:
    lines = []
    for row in rows:
        t = row['timing'].get(1)
        r = row.get('vs_mmseg') or {}
        lines.append([row['model'], f"{row['input_hw'][0]}x"
                      f"{row['input_hw'][1]}", row['label'],
                      _token_range(row['tokens_per_layer'] or []),
                      _fmt(row['gflops'], '.4g'),
                      _fmt(t and t['latency_ms'], '.1f'),
                      _fmt(t and t['images_per_s'], '.3f'),
                      _fmt(r.get('flops_ratio'), '.3f'),
                      _fmt(r.get('speedup', {}).get(1), '.3f'),
                      _fmt(r.get('efficiency', {}).get(1), '.3f'),
                      str(row.get('repeats', '-'))])
    return lines


SCALING_HEAD = ['model', 'input', 'row', 'tokens', 'GFLOPs', 'b1 ms',
                'b1 img/s', 'FLOPs ratio vs mmseg', 'speed-up vs mmseg',
                'efficiency vs mmseg', 'repeats']


def check_lines(checks: Sequence[dict]) -> List[list]:
    return [[c['check'], c['model'], c['part'], c['dtype'], c['row'],
             str(c['batch']), _fmt(c['value'], '.3f'),
             f"{c['op']} {c['target']:g}",
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
            f"{m['mmseg']}  onnxruntime {m.get('onnxruntime', '-')}  load "
            f"average at start {m['load_average']}, at end "
            f"{results.get('load_average_end')}\n"
            f"timing: {s['warmup']} warm-up + {s['repeats']} interleaved "
            'repeats per row (PyTorch, onnxruntime and compiled rows taking '
            'turns), median latency (images/s = batch / median); '
            'GFLOPs per image counted from what runs (count_flops), '
            "'analytic dev' = counted backbone FLOPs vs vit_flops + "
            'merge/reconstruct; efficiency = speed-up / FLOPs reduction '
            'factor; ToMe and MSTM are calibrated to the counted backbone '
            'GFLOPs of the PM row of their keep rate (within '
            f"{100 * s.get('match_tolerance', 0.02):g} %), 'vs PM' = their "
            'images/s / the PM row\'s; onnxruntime rows: CPU execution '
            'provider, same intra-op thread count; compiled rows: '
            'torch.compile (Inductor, static shapes), compile time apart; '
            'peak memory = most tensor memory held above the model and input '
            'during one inference / train step (forward + backward).')


def sections(results: dict) -> List[Tuple[str, List[str], List[list]]]:
    """(title, header, lines) of every table, in order."""
    s = results['settings']
    rows, batches = results['rows'], s['batch_sizes']
    out = []
    if rows:
        out.append(('Summary', summary_header(rows, batches),
                    summary_lines(rows, batches)))
    out.append(('All rows', table_header(batches, s['memory_batch']),
                table_rows(rows, batches, s['memory_batch'] is not None)))
    for title, head, lines in (
            ('Exported and compiled rows', runtime_header(batches),
             runtime_lines(rows, batches)),
            ('ONNX export', EXPORT_HEAD, export_lines(rows)),
            ('Where the time goes (PyTorch rows)', PROFILE_HEAD,
             profile_lines(rows)),
            ('Cost against input size (backbone, batch 1)', SCALE_HEAD,
             scale_lines(results.get('scale') or [])),
            ('Scaling with the model (segmentor, batch 1, fp32, PyTorch '
             'eager)', SCALING_HEAD,
             scaling_lines(results.get('scaling') or [])),
            ('Targets', CHECK_HEAD, check_lines(results.get('checks') or []))):
        if lines:
            out.append((title, head, lines))
    return out


def render_text(results: dict) -> str:
    parts = [describe(results)]
    for title, head, lines in sections(results):
        parts += ['', f'{title}:', text_table(head, lines)]
    if results.get('notes'):
        parts += ['', 'notes:'] + [f'- {n}' for n in results['notes']]
    return '\n'.join(parts)


def render_markdown(results: dict) -> str:
    s = results['settings']
    parts = ['# Benchmark: ' + ', '.join(s['configs']), '', describe(results)]
    for title, head, lines in sections(results):
        parts += ['', f'## {title}', '', markdown_table(head, lines)]
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


# marker and line style of each variant / runtime in the plot
VARIANT_MARKERS = {'mmseg': 's', 'off': '*', 'pm': 'o', 'pm-pinv': 'D',
                   'pm-matrix': 'P', 'pm-static': 'o', 'tome': 'v',
                   'mstm': '^', 'algm': 'h', 'hourglass': 'p',
                   'config': 'X'}
BACKEND_LINES = {EAGER: '-', ONNX: '--', COMPILE: ':'}


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
