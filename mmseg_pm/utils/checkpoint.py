"""Read and write checkpoints safely.

Reading: ``torch.load(..., weights_only=True)`` with mmengine's allow-list
(numpy arrays and scalars, ``HistoryBuffer``): enough for mmengine Runner
checkpoints and mmseg's released ones, and no arbitrary unpickling. URLs are
downloaded once into torch's hub cache, then loaded the same way.
Writing: a temporary file in the destination folder, then a rename, so a
crash never leaves a half-written checkpoint under the final name.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import torch


def cached_download(url: str) -> Path:
    """The local copy of ``url`` in torch's hub cache, downloaded once."""
    parsed = urlparse(url)
    if parsed.scheme not in ('http', 'https'):
        raise ValueError(f'only local files and http(s) URLs can be loaded, '
                         f'got {url}')
    path = Path(torch.hub.get_dir()) / 'checkpoints' / Path(parsed.path).name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        # writes a temporary file and moves it into place when complete
        torch.hub.download_url_to_file(url, str(path), progress=True)
    return path


def load_checkpoint_file(path: str, map_location='cpu') -> dict:
    """Load a checkpoint dict from a local file or an http(s) URL."""
    from mmengine.runner.checkpoint import get_torch_safe_globals

    local = cached_download(str(path)) if '://' in str(path) else Path(path)
    if not local.is_file():
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    with torch.serialization.safe_globals(get_torch_safe_globals()):
        checkpoint = torch.load(local, map_location=map_location,
                                weights_only=True)
    if not isinstance(checkpoint, dict):
        raise ValueError(f'{path} does not hold a checkpoint dict')
    return checkpoint


def checkpoint_state_dict(checkpoint: dict) -> dict:
    """The weights of a checkpoint: mmengine keeps them under
    ``state_dict``; a bare state dict is returned as is. A ``module.``
    prefix (DDP) is removed."""
    state_dict = checkpoint.get('state_dict', checkpoint)
    if all(k.startswith('module.') for k in state_dict):
        state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
    return state_dict


def save_checkpoint_atomic(checkpoint: dict, path: str) -> None:
    """``torch.save`` to a temporary sibling file, then rename to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp',
                               dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(checkpoint, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
