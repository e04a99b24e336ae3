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
   with several centre placements and window assignments, and every other
   registered method (mmseg_pm.apis.knobs.METHODS; the defaults:
   mmseg_pm.study.settings) -- search the method's knob until its
   GFLOPs are within ``--tolerance`` of the target, evaluate it (mmseg's
   IoUMetric via tools/test.py), fine-tune it with distillation from the
   dense model (same iterations, seed and data for every method) and
   evaluate again;
4. measure images/s of all models side by side at batch 1;
5. write table.md, results.json and miou_vs_gflops.png to ``--out-dir``.

Example::

    python tools/study.py        # hours on 2 shared cores (benchmarks/study/table.md)
    python tools/study.py --budgets 0.7 --methods pm-row tome --dense-iters 100

Stages are cached under ``--work-dir`` by their settings: running again with
the same settings reuses the dense model and finished variants (``--fresh``
recomputes everything).
"""
import argparse

from mmseg_pm.apis.knobs import METHODS
from mmseg_pm.cli import (defaults_of, int_at_least, run_cli, set_process,
                          settings_from)
from mmseg_pm.study.pipeline import run_study
from mmseg_pm.study.settings import StudySettings


def build_parser() -> argparse.ArgumentParser:
    d = defaults_of(StudySettings)
    parser = argparse.ArgumentParser(
        description='Quality of every token-compression method at matched '
        'GFLOPs on synthetic ADE20K-format data')
    parser.add_argument('--work-dir', default=d['work_dir'])
    parser.add_argument('--out-dir', default=d['out_dir'])
    parser.add_argument('--data-root', default=d['data_root'],
                        help='synthetic data (default: WORK_DIR/data)')
    parser.add_argument('--budgets', type=float, nargs='+',
                        default=list(d['budgets']),
                        help='fractions of the dense GFLOPs')
    parser.add_argument('--methods', nargs='+', choices=list(METHODS),
                        default=list(d['methods']))
    parser.add_argument('--dense-iters', type=int, default=d['dense_iters'])
    parser.add_argument('--finetune-iters', type=int,
                        default=d['finetune_iters'])
    parser.add_argument('--score-iters', type=int, default=d['score_iters'])
    parser.add_argument('--seed', type=int, default=d['seed'])
    parser.add_argument('--img-size', type=int, default=d['img_size'],
                        help='square images = crops (patch 8)')
    parser.add_argument('--num-layers', type=int, default=d['num_layers'])
    parser.add_argument('--num-train', type=int, default=d['num_train'])
    parser.add_argument('--num-val', type=int, default=d['num_val'])
    parser.add_argument('--batch-size', type=int, default=d['batch_size'])
    parser.add_argument('--prune-rate', type=float, default=d['prune_rate'],
                        help='Prune-and-Merge prune rate (fixed; keep_rate '
                        'is calibrated)')
    parser.add_argument('--tolerance', type=float, default=d['tolerance'],
                        help='largest relative miss of the GFLOPs target')
    parser.add_argument('--speed-repeats', type=int,
                        default=d['speed_repeats'],
                        help='timed batch-1 forwards per model (median)')
    parser.add_argument('--threads', type=int_at_least(1), default=1,
                        help='torch CPU threads (1: on shared cores more '
                        'threads contend and run far slower)')
    parser.add_argument('--fresh', action='store_true',
                        help='recompute cached stages')
    return parser


def study(args) -> dict:
    """The study with the parsed settings, in a process with the given
    thread count."""
    settings = settings_from(StudySettings, args)
    set_process(args.threads)
    return run_study(settings)


def main(argv=None) -> dict:
    return run_cli(build_parser(), study, argv)


if __name__ == '__main__':
    main()
