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
import mmseg_pm.models  # noqa: E402,F401
from mmengine.config import Config  # noqa: E402
from mmseg_pm.apis import (check_launcher_environment,  # noqa: E402
                           check_runner_checkpoint, local_checkpoint,
                           setup_runner_launcher)
from mmseg_pm.cli import (UsageError, add_runner_arguments,  # noqa: E402
                          build_runner, check_runner_inputs, float_in,
                          load_config, resolve_work_dir, set_local_rank)


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


def check_out_folder(out_dir: str, force: bool) -> None:
    """Predictions are named after the images: an earlier run's files in
    ``out_dir`` would be replaced, so that needs --force."""
    folder = Path(out_dir)
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise UsageError(f'--out {out_dir} already holds files; pass --force '
                         'to write predictions over them, or choose an '
                         'empty folder')


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
    check_launcher_environment(args.launcher)  # first: how it was started
    checkpoint = local_checkpoint(args.checkpoint)  # before the config
    cfg = load_config(args.config, args.cfg_options, args.launcher)
    resolve_work_dir(cfg, args.work_dir, args.config)
    cfg.load_from = str(checkpoint)
    if args.show or args.show_dir:
        enable_visualization(cfg, args.show, args.show_dir, args.wait_time)
    if args.tta:
        enable_tta(cfg)
    check_runner_inputs(cfg, args.config, ['test_dataloader'],
                        {'--out': args.out, '--show-dir': args.show_dir})
    if args.out is not None:
        check_out_folder(args.out, args.force)
        save_predictions(cfg, args.out)
    setup_runner_launcher(cfg)
    return cfg


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    set_local_rank(args.local_rank)
    try:
        cfg = prepare_config(args)
        runner = build_runner(cfg)
        # every weight, and the structures the config compresses with
        check_runner_checkpoint(runner, require='all')
    except UsageError as err:
        parser.error(str(err))
    return runner.test()


if __name__ == '__main__':
    main()
