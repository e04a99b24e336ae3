"""The speed-quality plane: the quality study's mIoU of every method
against its measured speed-up at the same fraction of the GFLOPs.

Example (the committed plane, docs/results.md)::

    python tools/speed_quality.py \\
        --study benchmarks/study/results.json benchmarks/study_mpm/results.json \\
        --benchmark benchmarks/plane_vit-s_512_cpu.json

Writes benchmarks/<name>.md and .png; see mmseg_pm/benchmark/plane.py.
"""
import argparse
import json
from pathlib import Path
from typing import Optional, Sequence

from mmseg_pm.benchmark.plane import (plane_plot, plane_points, plane_table,
                                      verdict)
from mmseg_pm.cli import float_in, run_cli
from mmseg_pm.utils.errors import UsageError
from mmseg_pm.utils.outputs import check_output_file, write_atomic


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="The study's mIoU (before and after fine-tuning) "
        'against the measured speed-up of the same method at the same '
        'fraction of the GFLOPs: a table, the best method at each speed, '
        'and a plot',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--study', nargs='+', required=True,
                   help="results.json of tools/study.py runs on the same "
                   'dense model (rows of later files replace earlier ones '
                   'of the same method and budget)')
    p.add_argument('--benchmark', required=True,
                   help='the .json of a tools/benchmark.py run whose PM '
                   "rows sit at the study's budgets")
    p.add_argument('--max-gap', type=float_in(0), default=0.05,
                   help='largest difference of GFLOPs fractions between a '
                   'study row and its benchmark row')
    p.add_argument('--out-dir', default='benchmarks')
    p.add_argument('--name', default='speed_quality')
    p.add_argument('--force', action='store_true',
                   help='overwrite existing result files')
    return p


# what each input must hold: (flag, its results, top-level keys, row keys)
STUDY = ('--study', 'results.json of tools/study.py', ('dense', 'rows'),
         ('method', 'budget', 'fraction', 'miou_before', 'miou_after'))
BENCHMARK = ('--benchmark', '.json of tools/benchmark.py',
             ('machine', 'rows'),
             ('variant', 'backend', 'part', 'keep_rate', 'gflops'))


def read_json(path: str, what: tuple) -> dict:
    """The results in ``path``, checked to be the kind ``what`` describes
    (a study's and a benchmark's files are easily swapped)."""
    flag, kind, keys, row_keys = what
    try:
        results = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f'cannot read {flag} {path!r}: {err}')
    if not isinstance(results, dict):
        results = {}
    missing = [k for k in keys if k not in results]
    if not missing:
        rows = results['rows'] if isinstance(results['rows'], list) else [0]
        missing = sorted({f'rows[].{k}' for row in rows for k in row_keys
                          if not isinstance(row, dict) or k not in row})
    if missing:
        raise UsageError(f'{flag} {path} is not the {kind}: it lacks '
                         f'{missing}; give {flag} the {kind} (were the two '
                         'inputs swapped?)')
    return results


def speed_quality(args) -> dict:
    inputs = [*args.study, args.benchmark]
    paths = [check_output_file(Path(args.out_dir) / f'{args.name}{suffix}',
                               inputs, args.force, '--name', kind)
             for suffix, kind in (('.md', 'markdown'), ('.png', 'picture'))]
    studies = [read_json(p, STUDY) for p in args.study]
    benchmark = read_json(args.benchmark, BENCHMARK)
    rows = {}
    for study in studies:
        for row in study['rows']:
            rows[(row['method'], row['budget'])] = row
    points = plane_points(list(rows.values()), benchmark, args.max_gap)
    if not points:
        raise UsageError('no study row has a benchmark row of the same '
                         'method within --max-gap of its GFLOPs fraction: '
                         'run the benchmark at the keep rates whose PM rows '
                         "sit at the study's budgets")
    dense = studies[0]['dense']['miou']
    machine = benchmark['machine']
    report = '\n'.join([
        '# Speed and quality at the same fraction of the GFLOPs', '',
        "Quality: the study's proxy (" + ', '.join(args.study) + '), '
        'mIoU before / after the same fine-tune. Speed: ' + args.benchmark
        + f' ({machine.get("date")}, {machine.get("cpu")}, threads '
        f'{machine.get("threads")}, load average {machine.get("load_average")}'
        '), ViT-S 512 segmentor, eager PyTorch, images/s over compression '
        'off. The proxy is not ADE20K and the speed is not the proxy\'s: '
        'the table puts the two side by side at the same GFLOPs fraction.',
        '', plane_table(points, dense), '', *verdict(points), '',
        f'![plane]({args.name}.png)', ''])
    print(report)
    write_atomic(paths[0], report, args.force)
    write_atomic(paths[1], plane_plot(points, dense), args.force)
    print('wrote ' + ', '.join(str(p) for p in paths))
    return dict(points=points)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    return run_cli(build_parser(), speed_quality, argv)


if __name__ == '__main__':
    main()
