"""Quality study at matched FLOPs: every token-compression method on one
trained dense Segmenter, calibrated to the same GFLOPs, evaluated before and
after the same distillation fine-tune.

On the built-in synthetic ADE20K-format data (a small proxy, not ADE20K):

1. make the data, train ONE dense Segmenter (mmseg's VisionTransformer);
2. score its tokens once (gradient-weighted attention, docs/prune_and_merge.md
   section 1);
3. for each budget (fraction of the dense encoder+decoder GFLOPs, counted
   with ``count_flops``) and each method -- Prune and Merge with the
   authors' and the residual reconstruction, per layer and in span mode,
   with four centre placements (mmseg_pm.study.METHODS), MSTM and ToMe --
   search the method's knob until its
   GFLOPs are within ``--tolerance`` of the target, evaluate it (mmseg's
   IoUMetric via tools/test.py), fine-tune it with distillation from the
   dense model (same iterations, seed and data for every method) and
   evaluate again;
4. measure images/s of all models side by side at batch 1;
5. write table.md, results.json and miou_vs_gflops.png to ``--out-dir``.

Example::

    python tools/study.py                          # ~45 min on 2 shared cores
    python tools/study.py --budgets 0.7 --methods pm-row tome --dense-iters 100

Stages are cached under ``--work-dir`` by their settings: running again with
the same settings reuses the dense model and finished variants (``--fresh``
recomputes everything).
"""
import argparse
from pathlib import Path

from mmseg_pm.apis import UsageError
from mmseg_pm.cli import run_cli
from mmseg_pm.study import DEFAULT_BUDGETS, DEFAULT_METHODS, METHODS
from mmseg_pm.study.pipeline import run_study


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Quality of every token-compression method at matched '
        'GFLOPs on synthetic ADE20K-format data')
    parser.add_argument('--work-dir', default='work_dirs/study')
    parser.add_argument('--out-dir', default='benchmarks/study')
    parser.add_argument('--data-root',
                        help='synthetic data (default: WORK_DIR/data)')
    parser.add_argument('--budgets', type=float, nargs='+',
                        default=DEFAULT_BUDGETS,
                        help='fractions of the dense GFLOPs')
    parser.add_argument('--methods', nargs='+', choices=list(METHODS),
                        default=DEFAULT_METHODS)
    parser.add_argument('--dense-iters', type=int, default=600)
    parser.add_argument('--finetune-iters', type=int, default=60)
    parser.add_argument('--score-iters', type=int, default=20)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--img-size', type=int, default=96,
                        help='square images = crops (patch 8)')
    parser.add_argument('--num-layers', type=int, default=8)
    parser.add_argument('--num-train', type=int, default=400)
    parser.add_argument('--num-val', type=int, default=100)
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--prune-rate', type=float, default=0.0,
                        help='Prune-and-Merge prune rate (fixed; keep_rate '
                        'is calibrated)')
    parser.add_argument('--tolerance', type=float, default=0.02,
                        help='largest relative miss of the GFLOPs target')
    parser.add_argument('--speed-repeats', type=int, default=60,
                        help='timed batch-1 forwards per model (median)')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch CPU threads (1: on shared cores more '
                        'threads contend and run far slower)')
    parser.add_argument('--fresh', action='store_true',
                        help='recompute cached stages')
    return parser


def check(args):
    """Settings the parser's types cannot check; the defaults that
    depend on others."""
    for name in ('dense_iters', 'finetune_iters', 'score_iters', 'num_train',
                 'num_val', 'batch_size', 'speed_repeats', 'threads'):
        if getattr(args, name) < 1:
            raise UsageError(f'--{name.replace("_", "-")} must be >= 1')
    if args.img_size % 8:
        raise UsageError('--img-size must be a multiple of the patch size 8')
    if args.num_layers < 2:
        raise UsageError('--num-layers must be >= 2 (block 0 stays dense)')
    if any(not 0 < b < 1 for b in args.budgets):
        raise UsageError('--budgets must lie in (0, 1)')
    if not 0 <= args.prune_rate < 1 or not 0 < args.tolerance < 1:
        raise UsageError('need 0 <= --prune-rate < 1 and 0 < --tolerance < 1')
    args.budgets = sorted(set(args.budgets), reverse=True)
    if args.data_root is None:
        args.data_root = str(Path(args.work_dir) / 'data')
    return args


def main(argv=None) -> dict:
    return run_cli(build_parser(), lambda args: run_study(check(args)), argv)


if __name__ == '__main__':
    main()
