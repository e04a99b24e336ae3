"""Train a segmentor from a config (mmseg-style command line).

Example::

    python tools/train.py configs/xxx.py --work-dir work_dirs/xxx
    torchrun --nproc-per-node 2 tools/train.py CONFIG --launcher pytorch
"""
import argparse

import mmseg_pm.models  # noqa: F401  (registers modules, the mmseg:: scope)
from mmseg_pm.apis import train, train_config
from mmseg_pm.cli import add_runner_arguments, run_cli

CFG_EXAMPLE = 'train_cfg.max_iters=100'


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description='Train a segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='dir for logs and checkpoints')
    parser.add_argument(
        '--resume',
        action='store_true',
        help='resume from the latest checkpoint in the work dir')
    parser.add_argument(
        '--amp',
        action='store_true',
        help='automatic mixed precision (AmpOptimWrapper, dynamic scale)')
    add_runner_arguments(parser, CFG_EXAMPLE)
    return parser


def main(argv=None):
    def run(args):
        return train(train_config(args.config, args.work_dir,
                                  args.cfg_options, args.launcher,
                                  args.resume, args.amp))
    return run_cli(build_parser(), run, argv)


if __name__ == '__main__':
    main()
