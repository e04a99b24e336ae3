"""Build a segmentor from a config and load a checkpoint into it: the one
way every tool, the demo, the study and the benchmark get a model."""
import os
from typing import Optional, Union

import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from torch import nn

from mmseg_pm.models.checkpoint import load_checkpoint_into
from mmseg_pm.utils.checkpoint import local_checkpoint
from mmseg_pm.utils.errors import UsageError

from .config import check_model, load_config


def build_segmentor(cfg: Config) -> nn.Module:
    """The config's segmentor, randomly initialised, in eval mode (the
    config's pretrained-weight settings are dropped: weights come from a
    checkpoint). Registers the project's modules first."""
    import mmseg_pm.models  # noqa: F401  (registers modules)
    from mmseg.registry import MODELS

    check_model(cfg)
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
    if not isinstance(config, (str, os.PathLike, Config)):
        raise UsageError(f'config must be a config file path or an mmengine '
                         f'Config, got {type(config).__name__} {config!r:.60}')
    device = check_device(device)
    if isinstance(checkpoint, (str, os.PathLike)):
        local_checkpoint(checkpoint)  # a missing file fails before the build
    elif checkpoint is not None and not isinstance(checkpoint, dict):
        raise UsageError('checkpoint must be a path, an http(s) URL, a loaded '
                         f'checkpoint dict or None, got '
                         f'{type(checkpoint).__name__}')
    if isinstance(config, Config):
        if not isinstance(config.get('model'), dict):
            raise UsageError('the Config defines no model=dict(type=..., '
                             '...); read a config file of configs/')
        cfg = config.copy()
        if cfg_options:
            cfg.merge_from_dict(cfg_options)
    else:
        cfg = load_config(str(config), cfg_options)
    model = build_segmentor(cfg)
    loaded = None
    if checkpoint is not None:
        loaded = load_checkpoint_into(model, checkpoint, require=require,
                                      structures=structures)
    set_inference_attributes(model, cfg, loaded)
    return model.to(device).eval()


def check_device(device) -> torch.device:
    """A device torch knows and this machine has ('cpu', 'cuda',
    'cuda:1', ...)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UsageError(f'device {device!r} is not a torch device; use '
                         "'cpu', 'cuda' or 'cuda:N'") from err
    if parsed.type == 'cuda':
        count = torch.cuda.device_count()
        if count == 0 or (parsed.index or 0) >= count:
            raise UsageError(f'device {device!r}: torch sees {count} CUDA '
                             "device(s); use 'cpu'" + (
                                 f" or 'cuda:0'..'cuda:{count - 1}'"
                                 if count else ''))
    return parsed


def set_inference_attributes(model: nn.Module, cfg: Config,
                             checkpoint: Optional[dict]) -> None:
    """What mmseg's ``init_model`` sets, so that mmseg's ``inference_model``
    and ``show_result_pyplot`` take our model as theirs: ``model.cfg`` (its
    test pipeline) and ``model.dataset_meta`` (class names and palette: the
    checkpoint's, else the test dataset's class defaults)."""
    model.cfg = cfg
    meta = (checkpoint or {}).get('meta')
    dataset_meta = meta.get('dataset_meta') if isinstance(meta,
                                                           dict) else None
    if dataset_meta is None:
        dataset_meta = config_dataset_meta(cfg)
    if dataset_meta is not None:
        model.dataset_meta = dataset_meta


def config_dataset_meta(cfg: Config) -> Optional[dict]:
    """The METAINFO (classes, palette) of the config's test dataset class."""
    from mmseg.registry import DATASETS

    dataset = ((cfg.get('test_dataloader') or {}).get('dataset') or {})
    kind = dataset.get('type') if isinstance(dataset, dict) else None
    cls = DATASETS.get(kind) if isinstance(kind, str) else None
    info = getattr(cls, 'METAINFO', None)
    if not info or 'classes' not in info:
        return None
    return dict(classes=info['classes'], palette=info.get('palette'))


def crop_size(model: nn.Module):
    """(H, W) of one crop: the backbone's ``img_size``."""
    return tuple(model.backbone.img_size)


@torch.no_grad()
def crop_flops(model: nn.Module, device: Optional[str] = None) -> int:
    """FLOPs of one forward of the segmentor (encoder and decoder) on one
    crop of its backbone's ``img_size`` (no slide loop), as counted by
    :func:`mmseg_pm.utils.flops.count_flops` from what runs."""
    from mmseg_pm.utils.flops import count_flops

    size = getattr(getattr(model, 'backbone', None), 'img_size', None)
    if not isinstance(model, nn.Module) or size is None:
        raise UsageError(
            'crop_flops needs a segmentor (from init_segmentor or '
            'build_segmentor) whose backbone has an img_size, got '
            f'{type(model).__name__}')
    if device is None:
        device = next(model.parameters()).device
    inputs = torch.zeros(1, 3, *crop_size(model), device=device)
    return count_flops(model, inputs, mode='tensor')
