"""Reading and writing checkpoint files (no model involved).

Reading: ``torch.load(..., weights_only=True)`` with mmengine's allow-list
(numpy arrays and scalars, ``HistoryBuffer``): enough for mmengine Runner
checkpoints and mmseg's released ones, and no arbitrary unpickling. URLs are
downloaded once into torch's hub cache, then loaded the same way. A missing,
empty, truncated or foreign file, a folder and an unreachable URL are
refused with the file's name. NaN/Inf weights are a diverged run
(:func:`check_finite`).

Writing: :func:`save_checkpoint_atomic`, through the output rule of
:mod:`mmseg_pm.utils.outputs`.

Checking a checkpoint against a model is
:func:`mmseg_pm.models.checkpoint.load_checkpoint_into`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Union
from urllib.parse import urlparse

import torch
from torch import Tensor

from .errors import UsageError
from .outputs import atomic_output, is_url

SHOWN = 5  # keys quoted in a message


class CheckpointError(UsageError):
    """A checkpoint that cannot be used as given (the message names the
    file, the problem and the fix)."""


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """A checkpoint path that does not exist."""


def cached_download(url: str) -> Path:
    """The local copy of ``url`` in torch's hub cache, downloaded once."""
    parsed = urlparse(url)
    if parsed.scheme not in ('http', 'https'):
        raise CheckpointError(f'only local files and http(s) URLs can be '
                              f'loaded, got {url}')
    path = Path(torch.hub.get_dir()) / 'checkpoints' / Path(parsed.path).name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # writes a temporary file, moved into place when complete
            torch.hub.download_url_to_file(url, str(path), progress=True)
        except Exception as err:
            raise CheckpointError(
                f'cannot download {url}: {_first_line(err)}; check the '
                'address and the network, or download the file yourself and '
                'pass its path') from err
    return path


def _first_line(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [''])[0][:200]
    return f'{type(err).__name__}: {text}' if text else type(err).__name__


def local_checkpoint(path: Union[str, os.PathLike]) -> Path:
    """The local file of a checkpoint path or URL, checked to exist, to be a
    file and to be non-empty (before anything is built)."""
    if is_url(path):
        local = cached_download(str(path))
    else:
        local = Path(path).expanduser()
    if local.is_dir():
        hint = ''
        if (local / 'last_checkpoint').is_file():
            hint = (' (its last_checkpoint names '
                    f'{(local / "last_checkpoint").read_text().strip()})')
        raise CheckpointError(f'{path} is a folder, not a checkpoint file; '
                              f'name a .pth file inside it{hint}')
    if not local.is_file():
        raise CheckpointNotFound(f'checkpoint file not found: {path}')
    if local.stat().st_size == 0:
        raise CheckpointError(f'{path} is empty (0 bytes): an interrupted '
                              'copy or download? Fetch the checkpoint again')
    return local


def load_checkpoint_file(path: Union[str, os.PathLike],
                         map_location='cpu') -> dict:
    """Load a checkpoint dict from a local file or an http(s) URL."""
    checkpoint = load_weights_only(path, map_location)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'{path} holds a {type(checkpoint).__name__}, '
                              'not a checkpoint dict of weights')
    return checkpoint


def load_weights_only(path: Union[str, os.PathLike], map_location='cpu'):
    """Whatever a local file or http(s) URL saved with ``torch.save`` holds
    (a dict, a tensor...), loaded weights-only; unreadable files are
    refused like checkpoints."""
    from mmengine.runner.checkpoint import get_torch_safe_globals

    local = local_checkpoint(path)
    try:
        with torch.serialization.safe_globals(get_torch_safe_globals()):
            checkpoint = torch.load(local, map_location=map_location,
                                    weights_only=True)
    except Exception as err:
        kind = foreign_format(local)
        if kind is not None:
            raise CheckpointError(
                f'{path} is {kind}, not a readable PyTorch checkpoint; pass '
                'the .pth file of the model') from err
        if 'Weights only load failed' in str(err):
            raise CheckpointError(
                f'{path} holds Python objects that weights-only loading '
                f'refuses ({_weights_only_reason(err)}); if you trust the '
                'file, re-save just its weights (torch.save(torch.load(PATH, '
                "weights_only=False)['state_dict'], 'weights.pth')) and use "
                'that') from err
        raise CheckpointError(
            f'{path} is not a readable PyTorch checkpoint (truncated, '
            f'damaged or another format: {_first_line(err)}); fetch or '
            'write it again') from err
    return checkpoint


# the first bytes of files a checkpoint path is sometimes pointed at
MAGIC = ((b'\xff\xd8\xff', 'a JPEG image'), (b'\x89PNG', 'a PNG image'),
         (b'GIF8', 'a GIF image'), (b'BM', 'a BMP image'),
         (b'\x1f\x8b', 'a gzip archive (unpack it first)'),
         (b'%PDF', 'a PDF document'), (b'\x93NUMPY', 'a NumPy .npy array'),
         (b'\x89HDF', 'an HDF5 (Keras) file'))


def foreign_format(path: Path) -> Optional[str]:
    """What a file that torch cannot load is, from its first bytes (None
    when it does not look like anything known)."""
    with open(path, 'rb') as f:
        head = f.read(512)
    for magic, kind in MAGIC:
        if head.startswith(magic):
            return kind
    if head.startswith(b'PK\x03\x04') or head[:1] == b'\x80':
        return None  # a torch zip or pickle file: torch's error says more
    if len(head) >= 9 and head[8:9] == b'{':
        return 'a safetensors file (use a tool that reads .safetensors)'
    try:
        text = head.decode('utf-8')
    except UnicodeDecodeError:
        return None
    if text.lstrip().startswith(('<!DOCTYPE', '<html', '<HTML')):
        return 'an HTML page (a failed download?)'
    return 'a text file'


def _weights_only_reason(err: BaseException) -> str:
    found = re.search(r'GLOBAL (\S+)', str(err))
    if found:
        return f'unsupported global {found.group(1)}'
    lines = [ln.strip() for ln in str(err).splitlines()
             if ln.strip().startswith('Unsupported')]
    return lines[0][:200] if lines else 'unsupported content'


def checkpoint_state_dict(checkpoint: dict) -> dict:
    """The weights of a checkpoint: mmengine keeps them under
    ``state_dict``; a bare state dict is returned as is. A ``module.``
    prefix (DDP) is removed."""
    state_dict = checkpoint.get('state_dict', checkpoint)
    if state_dict and all(k.startswith('module.') for k in state_dict):
        state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
    return state_dict


def non_finite_weights(state_dict: Dict[str, Tensor]) -> List[str]:
    """Keys of floating-point tensors holding NaN or Inf."""
    return [k for k, v in state_dict.items()
            if isinstance(v, Tensor) and v.is_floating_point()
            and not bool(torch.isfinite(v).all())]


def check_finite(state_dict: Dict[str, Tensor], source: str) -> None:
    bad = non_finite_weights(state_dict)
    if bad:
        raise CheckpointError(
            f'{source} has NaN or Inf values in {len(bad)} weights (e.g. '
            f'{bad[:SHOWN]}): the run that wrote it diverged, or the file '
            'is damaged; use an earlier checkpoint')


def save_checkpoint_atomic(checkpoint: dict,
                           path: Union[str, os.PathLike],
                           replace: bool = True) -> None:
    """``torch.save`` through :func:`mmseg_pm.utils.outputs.atomic_output`
    (temporary sibling, renamed when complete, umask permissions;
    ``replace=False``: created only if no other run wrote ``path``)."""
    with atomic_output(path, replace) as tmp:
        torch.save(checkpoint, tmp)
