"""Where a compressed Segmenter's time goes, and what its content-aware
assignment costs against the block it serves.

Example (the committed run, docs/benchmark.md)::

    python tools/benchmark_parts.py \\
        configs/segmenter/pm-segmenter_vit-s_mask_8xb1-160k_ade20k-512x512.py \\
        --keep-rates 0.7 0.5 --batch-sizes 1 8 --threads 2

Writes benchmarks/<name>.json and .md.
"""
import argparse
import json
from pathlib import Path
from typing import Optional, Sequence

from mmseg_pm.benchmark.breakdown import measure_parts, render_parts
from mmseg_pm.cli import (CfgOptionsAction, float_in, int_at_least, run_cli,
                          set_process)
from mmseg_pm.utils.outputs import check_output_file, write_atomic


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Time breakdown of a Prune and Merge segmentor (blocks, "
        'merge, assignment, reconstruct, decode head) dense, with static and '
        'with content-aware windows, and the assignment against one block',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('config', help='a pm-segmenter mmseg config')
    p.add_argument('--keep-rates', nargs='+', type=float_in(0.0, 1.0, low_open=True),
                   default=[0.7, 0.5])
    p.add_argument('--batch-sizes', nargs='+', type=int_at_least(1),
                   default=[1, 8])
    p.add_argument('--threads', type=int_at_least(1), default=None,
                   help="torch's CPU threads (default: torch's own)")
    p.add_argument('--warmup', type=int_at_least(0), default=1)
    p.add_argument('--repeats', type=int_at_least(1), default=5)
    p.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction,
                   default=None, help='override config settings, key=value')
    p.add_argument('--out-dir', default='benchmarks')
    p.add_argument('--name', default=None,
                   help='file name stem (default: parts_<config stem>)')
    p.add_argument('--force', action='store_true',
                   help='overwrite existing result files')
    return p


def benchmark_parts(args) -> dict:
    name = args.name or 'parts_' + Path(args.config).stem
    paths = [check_output_file(Path(args.out_dir) / f'{name}{suffix}',
                               [args.config], args.force, '--name', kind)
             for suffix, kind in (('.json', 'json'), ('.md', 'markdown'))]
    set_process(args.threads)
    results = measure_parts(args.config, args.keep_rates, args.batch_sizes,
                            args.warmup, args.repeats, args.cfg_options)
    report = render_parts(results)
    print(report)
    write_atomic(paths[0], json.dumps(results, indent=1) + '\n', args.force)
    write_atomic(paths[1], report, args.force)
    print('wrote ' + ', '.join(str(p) for p in paths))
    return results


def main(argv: Optional[Sequence[str]] = None) -> dict:
    return run_cli(build_parser(), benchmark_parts, argv)


if __name__ == '__main__':
    main()
