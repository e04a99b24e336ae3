"""Build a segmentor from a config and load a checkpoint into it: the one
way every tool, the demo, the study and the benchmark get a model."""
from typing import Optional, Union

import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from torch import nn

from .checkpoint import load_checkpoint_into, local_checkpoint
from .config import load_config


def build_segmentor(cfg: Config) -> nn.Module:
    """The config's segmentor, randomly initialised, in eval mode (the
    config's pretrained-weight settings are dropped: weights come from a
    checkpoint). Registers the project's modules first."""
    import mmseg_pm.models  # noqa: F401  (registers modules)
    from mmseg.registry import MODELS

    init_default_scope(cfg.get('default_scope', 'mmseg'))
    model_cfg = cfg.model.copy()
    model_cfg.pop('pretrained', None)
    if isinstance(model_cfg.get('backbone'), dict):
        model_cfg['backbone'] = dict(model_cfg['backbone'])
        model_cfg['backbone'].pop('init_cfg', None)
    return MODELS.build(model_cfg).eval()


def init_segmentor(config: Union[str, Config],
                   checkpoint: Optional[Union[str, dict]] = None,
                   cfg_options: Optional[dict] = None,
                   device: str = 'cpu',
                   require: str = 'all',
                   structures: str = 'load') -> nn.Module:
    """The segmentor of ``config`` (a path or a Config) with the weights of
    ``checkpoint`` (a path, URL or loaded dict; None: random weights), in
    eval mode on ``device``. ``require`` and ``structures`` are
    :func:`load_checkpoint_into`'s: by default the checkpoint must hold
    every weight and its Prune-and-Merge structures are installed. Bad input
    raises a UsageError naming the file and the fix."""
    if isinstance(checkpoint, str):
        local_checkpoint(checkpoint)  # a missing file fails before the build
    cfg = config if isinstance(config, Config) else \
        load_config(config, cfg_options)
    model = build_segmentor(cfg)
    if checkpoint is not None:
        load_checkpoint_into(model, checkpoint, require=require,
                             structures=structures)
    return model.to(device).eval()


def crop_size(model: nn.Module):
    """(H, W) of one crop: the backbone's ``img_size``."""
    return tuple(model.backbone.img_size)


@torch.no_grad()
def crop_flops(model: nn.Module, device: Optional[str] = None) -> int:
    """FLOPs of one forward of the segmentor (encoder and decoder) on one
    crop of its backbone's ``img_size`` (no slide loop), as counted by
    :func:`mmseg_pm.utils.count_flops` from what runs."""
    from mmseg_pm.utils import count_flops

    if device is None:
        device = next(model.parameters()).device
    inputs = torch.zeros(1, 3, *crop_size(model), device=device)
    return count_flops(model, inputs, mode='tensor')
