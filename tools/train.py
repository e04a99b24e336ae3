"""Train a segmentor from a config (mmseg-style command line).

Example::

    python tools/train.py configs/xxx.py --work-dir work_dirs/xxx
    torchrun --nproc-per-node 2 tools/train.py CONFIG --launcher pytorch
"""
import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Must precede Config.fromfile: registers our modules and the mmseg:: scope.
import mmseg_pm  # noqa: E402,F401
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.device import get_device  # noqa: E402
from mmengine.logging import print_log  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from mmseg.registry import RUNNERS  # noqa: E402

# Devices mmengine's AmpOptimWrapper and init_dist work with.
ACCELERATORS = ('cuda', 'npu', 'mlu', 'musa')


class UsageError(ValueError):
    """A bad command line: reported as a usage error, not a traceback."""


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
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, e.g. train_cfg.max_iters=100 '
        'or key="[a,b]"')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    # torch.distributed launchers pass --local-rank (>=2.0) or --local_rank.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser


def set_local_rank(local_rank: int) -> None:
    """Expose the launcher's rank to mmengine unless torchrun already did."""
    os.environ.setdefault('LOCAL_RANK', str(local_rank))


def check_launcher(launcher: str, device: str) -> None:
    """mmengine's init_dist binds each process to an accelerator."""
    if launcher != 'none' and device not in ACCELERATORS:
        raise UsageError(
            f'--launcher {launcher} needs accelerators (mmengine binds each '
            f'process to a GPU); on {device!r} use --launcher none')


def load_config(path: str, cfg_options, launcher: str) -> Config:
    """Read the config and apply command-line overrides."""
    if not Path(path).is_file():
        raise UsageError(f'config file not found: {path}')
    cfg = Config.fromfile(path)
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def resolve_work_dir(cfg: Config, cli_work_dir, config_path: str) -> None:
    """Work dir priority: CLI > config > ./work_dirs/<config stem>."""
    if cli_work_dir is not None:
        cfg.work_dir = cli_work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = str(Path('./work_dirs') / Path(config_path).stem)


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


def build_runner(cfg: Config) -> Runner:
    """Default Runner, or a registered one named by ``runner_type``."""
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def prepare_config(args: argparse.Namespace) -> Config:
    """Config with every command-line option applied."""
    device = get_device()
    check_launcher(args.launcher, device)
    cfg = load_config(args.config, args.cfg_options, args.launcher)
    resolve_work_dir(cfg, args.work_dir, args.config)
    if args.amp:
        enable_amp(cfg, device)
    if args.resume:
        cfg.resume = True
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
