"""Ratios between the rows of a benchmark (each against its dense, its
compression-off and its Prune-and-Merge reference) and the checks of the
project's speed targets."""
from __future__ import annotations

from typing import List, Optional, Sequence

from .backends import COMPILE, CUDA_GRAPH, EAGER, ONNX
from mmseg_pm.compression.registry import method_spec

from .variants import PEER_VARIANTS, REFERENCE

# The issues' targets (ViT-S Segmenter, 512x512, 2 CPU threads).
MIN_EFFICIENCY = 0.95
MIN_SPARSE_OVER_DENSE = 1.2
MIN_RESIDUAL_OVER_PINV = 0.98
# rows at the GFLOPs of the PM row of their keep rate
MATCHED_TO_PM = PEER_VARIANTS + ('pm-pinv', )


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
                rows, row, REFERENCE, keep_rate=row['keep_rate']))
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
        if row['variant'] == REFERENCE and backend in (EAGER, ONNX):
            refs = ('mmseg', 'off') if backend == EAGER else ('off', )
            for ref in refs:
                r = row.get(f'vs_{ref}')
                for batch, eff in (r or {}).get('efficiency', {}).items():
                    add(f'efficiency vs {ref} ({backend})', eff,
                        MIN_EFFICIENCY, row, batch)
        if backend in (COMPILE, CUDA_GRAPH):
            for batch, c in row.get('compile', {}).items():
                add('graphs compiled on new data of the same shape',
                    c['recompiles_same_shape'], 0, row, batch, op='<=')
        if backend != EAGER:
            continue
        if row['variant'] in PEER_VARIANTS:
            for batch, s in ((row.get('vs_pm') or {}).get('speedup')
                             or {}).items():
                add(f'PM / {method_spec(row["variant"]).label} images/s (same '
                    'GFLOPs)', 1 / s, 1.0, row, batch)
        if row['variant'] == 'pm-pinv':
            for batch, s in ((row.get('vs_pm') or {}).get('speedup')
                             or {}).items():
                add('PM residual / pinv images/s', 1 / s,
                    MIN_RESIDUAL_OVER_PINV, row, batch)
        if row['variant'] == REFERENCE:
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
