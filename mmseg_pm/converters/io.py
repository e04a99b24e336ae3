"""Reading foreign checkpoints safely and writing converted ones whole.

Reading never unpickles arbitrary objects: ``.safetensors`` through the
safetensors loader, everything else through ``torch.load(...,
weights_only=True)``. Writing goes through a temporary file and a rename,
so a failed conversion leaves no file under the destination name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import torch
from torch import Tensor

from mmseg_pm.utils.checkpoint import (load_checkpoint_file, local_checkpoint,
                                       save_checkpoint_atomic)
from mmseg_pm.utils.outputs import check_output_file

from .timm_vit import ConversionError

# containers that hold the weights, in the order they are looked for:
# mmengine/timm training checkpoints, DeiT and Segmenter checkpoints
CONTAINER_KEYS = ('state_dict', 'model')


def load_weights_file(path: str) -> dict:
    """The checkpoint object of ``path`` (.pth/.pt/.bin or .safetensors)."""
    path = str(path)
    suffix = Path(path).suffix.lower()
    if suffix == '.npz':
        raise ConversionError(
            f'{path}: .npz (JAX/big_vision) checkpoints are not read here; '
            'load it with timm (timm.create_model(name, pretrained=True, '
            'pretrained_cfg_overlay=dict(file=PATH))), torch.save its '
            'state_dict() and convert that')
    if suffix == '.safetensors':
        from safetensors.torch import load_file
        local = local_checkpoint(path)
        try:
            return load_file(local, device='cpu')
        except Exception as err:
            raise ConversionError(f'{path} is not a readable safetensors '
                                  f'file ({type(err).__name__}: {err})') \
                from err
    return load_checkpoint_file(path)


def unwrap_state_dict(checkpoint: dict,
                      key: Optional[str] = None) -> Dict[str, Tensor]:
    """The weights inside a checkpoint: ``checkpoint[key]`` if given, else
    the first of :data:`CONTAINER_KEYS` present, else the dict itself. A
    ``module.`` prefix (DistributedDataParallel) is removed."""
    if key is not None:
        if key not in checkpoint:
            raise ConversionError(f'the checkpoint has no {key!r} entry; it '
                                  f'has {sorted(map(str, checkpoint))[:10]}')
        state_dict = checkpoint[key]
    else:
        state_dict = next((checkpoint[k] for k in CONTAINER_KEYS
                           if isinstance(checkpoint.get(k), dict)), checkpoint)
    not_tensors = [k for k, v in state_dict.items()
                   if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ConversionError(
            f'expected a state dict of tensors, but {not_tensors[:5]} are '
            'not tensors; name the entry that holds the weights with --key')
    if state_dict and all(k.startswith('module.') for k in state_dict):
        state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def check_destination(src: str, dst: str, force: bool = False) -> None:
    """The output rule (mmseg_pm.utils.outputs): not the input, a
    checkpoint's suffix, not an existing file without force, a writable
    folder."""
    check_output_file(dst, dict(checkpoint=src), force, flag='destination',
                      kind='checkpoint')


def save_converted(state_dict: Dict[str, Tensor], dst: str,
                   meta: Optional[dict] = None, replace: bool = True) -> None:
    """Write ``dict(meta=..., state_dict=...)`` atomically (contiguous CPU
    tensors, so the file does not keep views of larger storages;
    ``replace=False``: refused if another run wrote ``dst`` meanwhile)."""
    state_dict = {k: v.detach().cpu().contiguous().clone()
                  for k, v in state_dict.items()}
    save_checkpoint_atomic(dict(meta=dict(meta or {}), state_dict=state_dict),
                           dst, replace)
