"""The whole Prune-and-Merge pipeline on the built-in synthetic data, on CPU.

One command: make the synthetic ADE20K-format data set, train a tiny dense
Segmenter, score its tokens, prune and merge, fine-tune with distillation
from the dense model, evaluate dense and compressed models with mmseg's
IoUMetric, and print one table (mIoU, GFLOPs, images/s, tokens per block).
The residual reconstruction (the default) is shown next to the authors'
pinv at the same structure (docs/residual.md). It runs the project's own
tools (train.py, prune.py, test.py) in-process.

Example::

    python tools/demo.py                      # a few minutes on 2 CPU cores
    python tools/demo.py --keep-rate 0.5 --layers 1 2 3 --work-dir work_dirs/demo_05

Outputs (under --work-dir, default work_dirs/demo): dense/ and distill/
(training work dirs and checkpoints), pruned.pth (and pruned_pinv.pth),
the configs they were made with, prune.log,
merge_windows.png (the structures drawn on a validation image),
results.json and results.md (the table).
"""
import argparse

import torch

from mmseg_pm.apis import UsageError
from mmseg_pm.cli import run_cli
from mmseg_pm.compression import (ASSIGNS, DEFAULT_PLACEMENT, PLACEMENTS,
                                  RANKINGS, RECONSTRUCTS)
from mmseg_pm.demo import (DEMO_KEEP_RATE, DEMO_LAYERS, DEMO_PRUNE_RATE,
                           DEMO_RULE, run_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Prune-and-Merge demo on synthetic ADE20K-format data')
    parser.add_argument('--data-root', default='data/synthetic_ade')
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--train-iters', type=int, default=400,
                        help='dense training iterations (batch 8)')
    parser.add_argument('--distill-iters', type=int, default=200,
                        help='distillation fine-tuning iterations')
    parser.add_argument('--score-iters', type=int, default=20,
                        help='training batches used for token scores')
    parser.add_argument('--keep-rate', type=float, default=DEMO_KEEP_RATE)
    parser.add_argument('--prune-rate', type=float, default=DEMO_PRUNE_RATE)
    parser.add_argument('--layers', type=int, nargs='+', default=DEMO_LAYERS,
                        help='compressed blocks of the 4-block model')
    parser.add_argument('--ranking', choices=RANKINGS, default='global',
                        help='how the centres are shared out among the '
                        'compressed blocks (see tools/prune.py)')
    parser.add_argument('--rule', choices=('row', 'nearest'),
                        default=DEMO_RULE)
    parser.add_argument('--placement', choices=PLACEMENTS,
                        default=DEFAULT_PLACEMENT,
                        help='where the centres go (see tools/prune.py)')
    parser.add_argument('--reconstruct', choices=RECONSTRUCTS,
                        default='residual',
                        help="residual (default) or the authors' pinv")
    parser.add_argument('--assign', choices=ASSIGNS, default='content',
                        help='content (default): windows follow each image '
                        "around fixed centres; static: the structure's "
                        'windows (see tools/prune.py)')
    parser.add_argument('--bench-batch', type=int, default=16,
                        help='batch size of the images/s measurement')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch CPU threads (default 1: the tiny model '
                        'gains little from more, and on a shared CPU more '
                        'threads can be many times slower)')
    parser.add_argument('--device', choices=('cpu', 'cuda'),
                        default='cuda' if torch.cuda.is_available() else
                        'cpu')
    return parser


def run(args) -> dict:
    for name in ('train_iters', 'distill_iters', 'score_iters', 'bench_batch',
                 'threads'):
        if getattr(args, name) < 1:
            raise UsageError(f'--{name.replace("_", "-")} must be >= 1')
    if not 0 < args.keep_rate <= 1 or not 0 <= args.prune_rate < 1 or \
            args.keep_rate + args.prune_rate > 1:
        raise UsageError('need 0 < --keep-rate <= 1, 0 <= --prune-rate < 1 '
                         'and keep + prune <= 1')
    from mmseg_pm.apis.config import load_config
    from mmseg_pm.demo import PM_CONFIG
    load_config(str(PM_CONFIG), {  # the demo's compression, checked first
        'model.backbone.compression.layers': list(args.layers),
        'model.backbone.compression.keep_rate': args.keep_rate,
        'model.backbone.compression.prune_rate': args.prune_rate})
    return run_demo(args)


def main(argv=None) -> dict:
    return run_cli(build_parser(), run, argv)


if __name__ == '__main__':
    main()
