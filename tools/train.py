"""Train a segmentor from a config (mmseg-style command line).

Example::

    python tools/train.py configs/xxx.py --work-dir work_dirs/xxx
    torchrun --nproc-per-node 2 tools/train.py CONFIG --launcher pytorch
"""
import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Must precede Config.fromfile: registers our modules and the mmseg:: scope.
import mmseg_pm  # noqa: E402,F401
from mmengine.config import Config  # noqa: E402
from mmengine.device import get_device  # noqa: E402
from mmengine.logging import print_log  # noqa: E402
from mmseg_pm.cli import (ACCELERATORS, UsageError,  # noqa: E402
                          add_runner_arguments, build_runner, load_config,
                          resolve_work_dir, set_local_rank)
from mmseg_pm.apis import setup_runner_launcher  # noqa: E402


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


def enable_amp(cfg: Config, device: str) -> None:
    """Switch to AmpOptimWrapper; fail early where mmengine cannot run it."""
    if device not in ACCELERATORS:
        raise UsageError(
            f'--amp needs one of {ACCELERATORS}, but the device is '
            f'{device!r}: mmengine\'s AmpOptimWrapper refuses to run '
            'without one (CPU autocast would be bfloat16 only). '
            'Drop --amp to train in float32.')
    wrapper = cfg.get('optim_wrapper')
    if wrapper is None:
        raise UsageError('--amp needs an `optim_wrapper` in the config')
    if wrapper.get('type') == 'AmpOptimWrapper':
        print_log('AMP is already enabled in the config.', logger='current',
                  level=logging.WARNING)
        return
    if wrapper.get('type', 'OptimWrapper') != 'OptimWrapper':
        raise UsageError('--amp only converts `OptimWrapper`, got '
                         f'{wrapper.get("type")!r}')
    wrapper.type = 'AmpOptimWrapper'
    wrapper.loss_scale = 'dynamic'


def prepare_config(args: argparse.Namespace) -> Config:
    """Config with every command-line option applied."""
    device = get_device()
    cfg = load_config(args.config, args.cfg_options, args.launcher)
    resolve_work_dir(cfg, args.work_dir, args.config)
    if args.amp:
        enable_amp(cfg, device)
    if args.resume:
        cfg.resume = True
    setup_runner_launcher(cfg)
    return cfg


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    set_local_rank(args.local_rank)
    try:
        cfg = prepare_config(args)
    except UsageError as err:
        parser.error(str(err))
    build_runner(cfg).train()


if __name__ == '__main__':
    main()
