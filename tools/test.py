"""Test (and evaluate) a segmentor checkpoint (mmseg-style command line).

Example::

    python tools/test.py CONFIG CHECKPOINT --out work_dirs/preds
    torchrun --nproc-per-node 2 tools/test.py CONFIG CKPT --launcher pytorch
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Must precede Config.fromfile: registers our modules and the mmseg:: scope.
import mmseg_pm  # noqa: E402,F401
from mmengine.config import Config  # noqa: E402
from mmseg_pm.cli import (UsageError, add_runner_arguments,  # noqa: E402
                          build_runner, load_config, resolve_work_dir,
                          set_local_rank)
from mmseg_pm.apis import setup_runner_launcher  # noqa: E402


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
        '--wait-time', type=float, default=2, help='--show interval (s)')
    parser.add_argument(
        '--tta', action='store_true', help='test-time augmentation')
    add_runner_arguments(parser, CFG_EXAMPLE)
    return parser


def check_checkpoint(path: str) -> None:
    """Fail before building the model; remote URIs are left to mmengine."""
    if '://' not in path and not Path(path).is_file():
        raise UsageError(f'checkpoint file not found: {path}')


def enable_visualization(cfg: Config, show: bool, show_dir,
                         wait_time: float) -> None:
    """Turn on the visualization hook; images go to show_dir if given."""
    hook = cfg.get('default_hooks', {}).get('visualization')
    if hook is None:
        raise UsageError('--show/--show-dir need default_hooks.visualization'
                         "=dict(type='SegVisualizationHook') in the config")
    hook['draw'] = True
    if show:
        hook['show'] = True
        hook['wait_time'] = wait_time
    if show_dir:
        cfg.visualizer['save_dir'] = show_dir


def enable_tta(cfg: Config) -> None:
    """Wrap the model in the config's TTA model and use its pipeline."""
    missing = [k for k in ('tta_model', 'tta_pipeline') if k not in cfg]
    if missing:
        raise UsageError(f'--tta needs {" and ".join(missing)} in the config')
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model


def save_predictions(cfg: Config, out_dir: str) -> None:
    """Make the test metric(s) write predicted label maps to ``out_dir``."""
    evaluators = cfg.test_evaluator
    if not isinstance(evaluators, (list, tuple)):
        evaluators = [evaluators]
    for evaluator in evaluators:
        evaluator['output_dir'] = out_dir
        evaluator['keep_results'] = True


def prepare_config(args: argparse.Namespace) -> Config:
    """Config with every command-line option applied."""
    check_checkpoint(args.checkpoint)
    cfg = load_config(args.config, args.cfg_options, args.launcher)
    resolve_work_dir(cfg, args.work_dir, args.config)
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        enable_visualization(cfg, args.show, args.show_dir, args.wait_time)
    if args.tta:
        enable_tta(cfg)
    if args.out is not None:
        save_predictions(cfg, args.out)
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
    build_runner(cfg).test()


if __name__ == '__main__':
    main()
