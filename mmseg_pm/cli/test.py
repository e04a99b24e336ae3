"""Test (and evaluate) a segmentor checkpoint (mmseg-style command line).

Example::

    python tools/test.py CONFIG CHECKPOINT --out work_dirs/preds
    torchrun --nproc-per-node 2 tools/test.py CONFIG CKPT --launcher pytorch
"""
import argparse

import mmseg_pm.models  # noqa: F401  (registers modules, the mmseg:: scope)
from mmseg_pm.apis import evaluate, evaluation_config
from mmseg_pm.cli import add_runner_arguments, float_in, run_cli

CFG_EXAMPLE = 'test_dataloader.batch_size=2'


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) a segmentor')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir', help='dir for logs and the dumped metrics')
    parser.add_argument(
        '--out',
        help='dir to save predicted label maps as PNG (ADE ids for '
        'reduce_zero_label data sets)')
    parser.add_argument(
        '--show', action='store_true', help='display painted predictions')
    parser.add_argument(
        '--show-dir',
        help='save painted predictions under SHOW_DIR/vis_data/vis_image')
    parser.add_argument(
        '--force', action='store_true',
        help='write into an --out folder that already holds files')
    parser.add_argument(
        '--wait-time', type=float_in(0), default=2,
        help='--show interval (s)')
    parser.add_argument(
        '--tta', action='store_true', help='test-time augmentation')
    add_runner_arguments(parser, CFG_EXAMPLE)
    return parser


def main(argv=None) -> dict:
    def run(args):
        return evaluate(evaluation_config(
            args.config, args.checkpoint, args.work_dir, args.cfg_options,
            args.launcher, args.out, args.force, args.show, args.show_dir,
            args.wait_time, args.tta))
    return run_cli(build_parser(), run, argv)


if __name__ == '__main__':
    main()
