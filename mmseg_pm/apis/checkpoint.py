"""Checkpoints in the Runner's hands: which one a Runner loads, checked
against its model before mmengine loads it. Reading and writing checkpoint
files is :mod:`mmseg_pm.utils.checkpoint`, loading one into a model
:mod:`mmseg_pm.models.checkpoint`."""
from __future__ import annotations

from typing import Optional

from mmseg_pm.models.checkpoint import load_checkpoint_into


def runner_checkpoint(cfg) -> Optional[str]:
    """The checkpoint a Runner built from ``cfg`` loads: ``load_from``, or
    with ``resume`` and no ``load_from`` the latest in its work dir."""
    from mmengine.runner import find_latest_checkpoint

    if cfg.get('load_from'):
        return str(cfg.load_from)
    if cfg.get('resume') and cfg.get('work_dir'):
        return find_latest_checkpoint(cfg.work_dir)
    return None


def check_runner_checkpoint(runner, require: str) -> Optional[str]:
    """Before ``runner.train()`` / ``runner.test()``: check the checkpoint
    the Runner is about to load against its model (mmengine loads
    non-strictly, so an unrelated or mismatched checkpoint would otherwise
    run silently) by loading it through :func:`load_checkpoint_into`.
    mmengine then loads it once more itself. Returns its path."""
    from mmengine.model import BaseTTAModel, is_model_wrapper

    path = runner_checkpoint(runner.cfg)
    if path is None:
        return None
    model = runner.model
    # what mmengine loads into: the module inside DDP and TTA wrappers
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    load_checkpoint_into(model, path, require=require)
    return path
