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

from mmseg_pm.cli import (defaults_of, int_at_least, run_cli, set_process,
                          settings_from)
from mmseg_pm.compression import ASSIGNS, PLACEMENTS, RANKINGS, RECONSTRUCTS
from mmseg_pm.compression.structure import ASSIGN_RULES
from mmseg_pm.demo import DemoSettings, run_demo


def build_parser() -> argparse.ArgumentParser:
    d = defaults_of(DemoSettings)
    parser = argparse.ArgumentParser(
        description='Prune-and-Merge demo on synthetic ADE20K-format data')
    parser.add_argument('--data-root', default=d['data_root'])
    parser.add_argument('--work-dir', default=d['work_dir'])
    parser.add_argument('--train-iters', type=int, default=d['train_iters'],
                        help='dense training iterations (batch 8)')
    parser.add_argument('--distill-iters', type=int,
                        default=d['distill_iters'],
                        help='distillation fine-tuning iterations')
    parser.add_argument('--score-iters', type=int, default=d['score_iters'],
                        help='training batches used for token scores')
    parser.add_argument('--keep-rate', type=float, default=d['keep_rate'])
    parser.add_argument('--prune-rate', type=float, default=d['prune_rate'])
    parser.add_argument('--layers', type=int, nargs='+',
                        default=list(d['layers']),
                        help='compressed blocks of the 4-block model')
    parser.add_argument('--ranking', choices=RANKINGS, default=d['ranking'],
                        help='how the centres are shared out among the '
                        'compressed blocks (see tools/prune.py)')
    parser.add_argument('--rule', choices=ASSIGN_RULES, default=d['rule'])
    parser.add_argument('--placement', choices=PLACEMENTS,
                        default=d['placement'],
                        help='where the centres go (see tools/prune.py)')
    parser.add_argument('--reconstruct', choices=RECONSTRUCTS,
                        default=d['reconstruct'],
                        help="residual (default) or the authors' pinv")
    parser.add_argument('--assign', choices=ASSIGNS, default=d['assign'],
                        help='content (default): windows follow each image '
                        "around fixed centres; static: the structure's "
                        'windows (see tools/prune.py)')
    parser.add_argument('--bench-batch', type=int, default=d['bench_batch'],
                        help='batch size of the images/s measurement')
    parser.add_argument('--threads', type=int_at_least(1), default=1,
                        help='torch CPU threads (default 1: the tiny model '
                        'gains little from more, and on a shared CPU more '
                        'threads can be many times slower)')
    parser.add_argument('--device', choices=('cpu', 'cuda'),
                        default=d['device'])
    return parser


def demo(args) -> dict:
    """The demo with the parsed settings, in a process with the given
    thread count."""
    settings = settings_from(DemoSettings, args)
    set_process(args.threads)
    return run_demo(settings)


def main(argv=None) -> dict:
    return run_cli(build_parser(), demo, argv)


if __name__ == '__main__':
    main()
