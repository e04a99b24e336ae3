"""The benchmark's tables (cells of each section, text and markdown, through
the project's one table renderer :mod:`mmseg_pm.utils.tables`)."""
from __future__ import annotations

import re
from typing import List, Sequence, Tuple

from mmseg_pm.utils.tables import markdown_table, text_table

from .backends import EAGER, ONNX
from .variants import REFERENCE


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
    if row['variant'] == REFERENCE:
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


def ops_lines(rows: Sequence[dict]) -> List[list]:
    """Aten ops of one batch-1 forward per eager row: all, those that
    launch a kernel (not views), host synchronisations, and per merging
    unit the launches over the same model's compression-off row."""
    off = {(r['model'], r['part']): r['ops']['launches'] for r in rows
           if r.get('ops') and r['variant'] == 'off'}
    lines = []
    for row in rows:
        ops = row.get('ops')
        if not ops:
            continue
        base = off.get((row['model'], row['part']))
        per_unit = '-' if not ops['units'] or base is None else \
            f"{(ops['launches'] - base) / ops['units']:.1f}"
        ratio = '-' if not base else f"{ops['launches'] / base:.2f}"
        lines.append([row['model'], row['part'], row['label'],
                      str(ops['ops']), str(ops['launches']), ratio,
                      str(ops['units']), per_unit, str(ops['syncs']),
                      ', '.join(f'{k} {v}' for k, v in ops['top'].items())])
    return lines


OPS_HEAD = ['model', 'part', 'row', 'aten ops', 'kernel launches',
            'launches vs off', 'merging units', 'launches per unit (over off)',
            'host syncs', 'most launched']


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
        cells = []
        for ref in ('vs_mmseg', 'vs_off'):
            r = row.get(ref) or {}
            cells += [_fmt(r.get('flops_ratio'), '.3f'),
                      _fmt(r.get('speedup', {}).get(1), '.3f'),
                      _fmt(r.get('efficiency', {}).get(1), '.3f')]
        lines.append([row['model'], f"{row['input_hw'][0]}x"
                      f"{row['input_hw'][1]}", row['label'],
                      _token_range(row['tokens_per_layer'] or []),
                      _fmt(row['gflops'], '.4g'),
                      _fmt(t and t['latency_ms'], '.1f'),
                      _fmt(t and t['images_per_s'], '.3f'), *cells,
                      str(row.get('repeats', '-'))])
    return lines


SCALING_HEAD = ['model', 'input', 'row', 'tokens', 'GFLOPs', 'b1 ms',
                'b1 img/s', 'FLOPs ratio vs mmseg', 'speed-up vs mmseg',
                'efficiency vs mmseg', 'FLOPs ratio vs off',
                'speed-up vs off', 'efficiency vs off', 'repeats']


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
            'factor; the peers are calibrated to the counted backbone '
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
            ('Ops per forward (PyTorch eager, batch 1: on a GPU about one '
             'kernel launch per op that is not a view)', OPS_HEAD,
             ops_lines(rows)),
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
