"""Test helper imported by the distributed training processes (through the
config's ``custom_imports``): every rank saves its own weights before and
after training, so a test can compare the ranks' models."""
from pathlib import Path

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS


@HOOKS.register_module()
class SaveRankWeightsHook(Hook):
    """Writes ``WORK_DIR/rank_weights/{before,after}_rank{R}.pth``."""

    def _save(self, runner, stage: str) -> None:
        model = runner.model
        if is_model_wrapper(model):
            model = model.module
        out = Path(runner.work_dir) / 'rank_weights'
        out.mkdir(exist_ok=True)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.save(state, out / f'{stage}_rank{runner.rank}.pth')

    def before_train(self, runner) -> None:
        self._save(runner, 'before')

    def after_train(self, runner) -> None:
        self._save(runner, 'after')
