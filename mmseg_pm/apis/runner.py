"""Train and evaluate through mmengine's Runner (what tools/train.py and
tools/test.py run, and what the demo and the study call): a config with
the run's options applied and checked, then one call. Bad input raises a
:class:`UsageError` before the Runner is built."""
import logging

import torch
from pathlib import Path
from typing import Iterable, Optional

from mmengine.config import Config
from mmengine.device import get_device
from mmengine.hooks import Hook
from mmengine.logging import print_log
from tqdm import tqdm

from mmseg_pm.utils.checkpoint import local_checkpoint
from mmseg_pm.utils.errors import UsageError

from .checkpoint import check_runner_checkpoint, runner_checkpoint
from .config import (build_runner, check_runner_inputs, load_config,
                     resolve_work_dir)
from .distributed import (ACCELERATORS, check_launcher_environment,
                          setup_runner_launcher)


class ProgressHook(Hook):
    """A tqdm bar over training iterations or test batches."""

    priority = 'VERY_LOW'

    def __init__(self, desc: str):
        self.desc = desc
        self.bar = None

    def before_train(self, runner):
        self.bar = tqdm(total=runner.max_iters - runner.iter, desc=self.desc,
                        unit='it', dynamic_ncols=True)

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        self.bar.update(1)
        if outputs and 'loss' in outputs:
            loss = torch.as_tensor(outputs['loss']).detach()
            self.bar.set_postfix(loss=f'{float(loss):.3f}')

    def after_train(self, runner):
        self.bar.close()

    def before_test_epoch(self, runner):
        self.bar = tqdm(total=len(runner.test_dataloader), desc=self.desc,
                        unit='img', dynamic_ncols=True)

    def after_test_iter(self, runner, batch_idx, data_batch=None,
                        outputs=None):
        self.bar.update(1)

    def after_test_epoch(self, runner, metrics=None):
        self.bar.close()


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


def train_config(config: str, work_dir: Optional[str] = None,
                 cfg_options: Optional[dict] = None, launcher: str = 'none',
                 resume: bool = False, amp: bool = False) -> Config:
    """The training config with every option applied and checked."""
    device = get_device()
    check_launcher_environment(launcher)  # first: how it was started
    cfg = load_config(config, cfg_options, launcher)
    resolve_work_dir(cfg, work_dir, config)
    if amp:
        enable_amp(cfg, device)
    if resume:
        cfg.resume = True
        check_resumable(cfg)
    validating = cfg.get('val_cfg') and cfg.get('val_dataloader')
    check_runner_inputs(cfg, config, ['train_dataloader'] +
                        (['val_dataloader'] if validating else []))
    setup_runner_launcher(cfg)
    return cfg


def check_resumable(cfg: Config) -> None:
    """``--resume`` without ``load_from`` needs a run to continue in the
    work dir (mmengine would otherwise train from iteration 0 and say it
    only in its log)."""
    if runner_checkpoint(cfg) is None:
        raise UsageError(
            f'--resume: the work dir {cfg.work_dir} holds no run to resume '
            '(no last_checkpoint file); check --work-dir, or drop --resume '
            'to train from iteration 0')


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


def evaluation_config(config: str, checkpoint: str,
                work_dir: Optional[str] = None,
                cfg_options: Optional[dict] = None, launcher: str = 'none',
                out: Optional[str] = None, force: bool = False,
                show: bool = False, show_dir: Optional[str] = None,
                wait_time: float = 2, tta: bool = False) -> Config:
    """The test config with every option applied and checked."""
    check_launcher_environment(launcher)  # first: how it was started
    checkpoint = local_checkpoint(checkpoint)  # before the config
    cfg = load_config(config, cfg_options, launcher)
    resolve_work_dir(cfg, work_dir, config)
    cfg.load_from = str(checkpoint)
    if show or show_dir:
        enable_visualization(cfg, show, show_dir, wait_time)
    if tta:
        enable_tta(cfg)
    check_runner_inputs(cfg, config, ['test_dataloader'],
                        {'--out': out, '--show-dir': show_dir})
    if out is not None:
        check_out_folder(out, force)
        save_predictions(cfg, out)
    setup_runner_launcher(cfg)
    return cfg


def train(cfg: Config, hooks: Iterable[Hook] = ()):
    """Build the Runner, check the checkpoint it starts from (fine-tuning
    may add weights, a new head, but not most of them), train; returns
    the trained model."""
    runner = build_runner(cfg)
    check_runner_checkpoint(runner, require='most')
    for hook in hooks:
        runner.register_hook(hook)
    return runner.train()


def evaluate(cfg: Config, hooks: Iterable[Hook] = ()) -> dict:
    """Build the Runner, check its checkpoint (every weight, and the
    structures the config compresses with), test; returns the metrics."""
    runner = build_runner(cfg)
    check_runner_checkpoint(runner, require='all')
    for hook in hooks:
        runner.register_hook(hook)
    return runner.test()


def run_quietly(cfg: Config, desc: str, mode: str):
    """:func:`train` (``mode='train'``, without its validation: callers
    evaluate separately) or :func:`evaluate` with a progress bar instead of
    the log on the console (the full log goes to the work dir)."""
    cfg.log_level = 'WARNING'
    if mode == 'train':
        cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
        return train(cfg, [ProgressHook(desc)])
    return evaluate(cfg, [ProgressHook(desc)])
