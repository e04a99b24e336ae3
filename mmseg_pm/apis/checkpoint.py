"""The one path by which every tool reads a checkpoint into a model.

Reading: ``torch.load(..., weights_only=True)`` with mmengine's allow-list
(numpy arrays and scalars, ``HistoryBuffer``): enough for mmengine Runner
checkpoints and mmseg's released ones, and no arbitrary unpickling. URLs are
downloaded once into torch's hub cache, then loaded the same way. A missing,
empty, truncated or foreign file, a folder and an unreachable URL are
refused with the file's name.

Checking against the model (:func:`load_checkpoint_into`): a checkpoint
that leaves most of the model's weights missing is not a checkpoint of this
model; one with Prune-and-Merge structures for a model that has none (or for
other blocks) would silently evaluate another function; NaN/Inf weights are
a diverged run. All three are refused with the fix in the message. A
checkpoint without structures for a compressed model keeps the built-in
lattice structures (the backbone says so).

Writing: :func:`save_checkpoint_atomic`, through the output rule of
:mod:`mmseg_pm.apis.outputs`.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Union
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from .errors import UsageError
from .outputs import atomic_output, is_url

STRUCTURE_KEY = 'token_compressors.'
# weights of input-dependent mergers (MSTM's coarse branch)
MERGER_PREFIXES = ('backbone.token_merger.', 'token_merger.')
# load_checkpoint_into(require=...): every weight, or most of them
REQUIRE = ('all', 'most')
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


def _is_structure(key: str) -> bool:
    return STRUCTURE_KEY in key


def _units(keys) -> List[int]:
    """First blocks of the compressed units whose structures ``keys``
    hold."""
    return sorted({int(k.split(STRUCTURE_KEY)[1].split('.')[0])
                   for k in keys if _is_structure(k)})


def _warn(message: str) -> None:
    from mmengine.logging import print_log
    print_log(message, logger='current', level=logging.WARNING)


def _pruned_with(checkpoint: dict) -> str:
    """' (tools/prune.py made it from CONFIG)' when its meta says so."""
    meta = checkpoint.get('meta')
    summary = meta.get('prune_and_merge') if isinstance(meta, dict) else None
    config = summary.get('config') if isinstance(summary, dict) else None
    return f' ({config})' if config else ''


def check_structures_used(model_keys, state_keys, source: str,
                          checkpoint: dict, model=None) -> None:
    """Refuse structures for a model that has no compressed units: they
    would be dropped and the dense function evaluated in their place."""
    saved = _units(state_keys)
    if saved and not _units(model_keys):
        raise CheckpointError(
            f'{source} holds Prune-and-Merge structures (compressed units '
            f'from blocks {saved}) but the config\'s model is '
            f'{_model_method(model)}, so they would be dropped and another '
            'function run in their place; use the Prune-and-Merge config '
            f'the checkpoint was made with{_pruned_with(checkpoint)}')


def _model_method(model) -> str:
    """What the model's backbone compresses with, in words."""
    config = getattr(getattr(model, 'backbone', model), 'compression', None)
    method = getattr(config, 'method', None)
    names = dict(pm='Prune-and-Merge', mstm='MSTM', tome='ToMe')
    if method is None:
        return 'dense (it compresses no tokens)'
    return f"{names.get(method, method)} (compression method={method!r})"


def _fit(model_state: Dict[str, Tensor], state_dict: dict):
    """(matched, missing, other shapes) of the model's weights (structures
    left out: they have their own rules)."""
    wanted = {k: v for k, v in model_state.items() if not _is_structure(k)}
    missing = [k for k in wanted if k not in state_dict]
    reshaped = [k for k in wanted if k in state_dict and (
        not isinstance(state_dict[k], Tensor)
        or tuple(state_dict[k].shape) != tuple(wanted[k].shape))]
    matched = len(wanted) - len(missing) - len(reshaped)
    return matched, missing, reshaped, len(wanted)


def _not_this_model(source: str, matched: int, total: int,
                    state_dict: dict) -> CheckpointError:
    entries = list(state_dict)[:SHOWN]
    hint = ''
    if any(isinstance(state_dict[k], dict) for k in state_dict):
        hint = (' Its weights may sit in a container of another format '
                '(timm, DeiT, Segmenter): convert it with '
                'tools/model_converters/.')
    return CheckpointError(
        f'{source} is not a checkpoint of the config\'s model: only '
        f'{matched} of the model\'s {total} weights are in it (its entries '
        f'look like {entries}), so the model would run with random weights. '
        'Pass a checkpoint written for this config (or fix the config).'
        + hint)


def _other_shapes(source: str, reshaped: List[str], state_dict: dict,
                  own: dict) -> CheckpointError:
    shapes = '; '.join(
        f'{k}: {tuple(getattr(state_dict[k], "shape", ()))} in the '
        f'checkpoint, {tuple(own[k].shape)} in the model'
        for k in reshaped[:2])
    return CheckpointError(
        f'{source} has every weight name of the config\'s model, but '
        f'{len(reshaped)} of them have other shapes (e.g. {shapes}): it is '
        'a checkpoint of another size of this architecture (width, depth of '
        'the head, number of classes or img_size); use the config it was '
        'trained with')


def load_checkpoint_into(model: nn.Module,
                         checkpoint: Union[str, os.PathLike, dict],
                         source: Optional[str] = None,
                         require: str = 'all',
                         structures: str = 'load') -> dict:
    """Check ``checkpoint`` (a path, URL or loaded dict) against ``model``
    and load its weights; returns the checkpoint dict.

    ``require='all'``: every weight of the model must be in it with its
    shape (evaluation, export, pruning). ``'most'``: fine-tuning may start
    from a checkpoint missing a few (a new head); they are named in a
    warning, but a checkpoint missing most of them is refused.
    ``structures='ignore'``: the model keeps its own Prune-and-Merge
    structures (tools that rebuild them); ``'load'``: the checkpoint's are
    installed, and refused for a model without (or with other) compressed
    units.
    """
    if require not in REQUIRE:
        raise ValueError(f'require must be one of {REQUIRE}, got {require!r}')
    if structures not in ('load', 'ignore'):
        raise ValueError("structures must be 'load' or 'ignore', got "
                         f'{structures!r}')
    if not isinstance(model, nn.Module):
        raise UsageError(f'load_checkpoint_into needs a torch.nn.Module, got '
                         f'{type(model).__name__}')
    if isinstance(checkpoint, dict):
        source = source or 'the checkpoint'
    elif not isinstance(checkpoint, (str, os.PathLike)):
        raise CheckpointError(
            'checkpoint must be a path, an http(s) URL or a loaded '
            f'checkpoint dict, got {type(checkpoint).__name__} '
            f'{checkpoint!r:.60}')
    else:
        source = source or str(checkpoint)
        checkpoint = load_checkpoint_file(checkpoint)
    state_dict = checkpoint_state_dict(checkpoint)
    own = model.state_dict()
    matched, missing, reshaped, total = _fit(own, state_dict)
    if matched * 2 < total and not missing:
        raise _other_shapes(source, reshaped, state_dict, own)
    if matched * 2 < total:
        raise _not_this_model(source, matched, total, state_dict)
    if structures == 'ignore':
        state_dict = {k: v for k, v in state_dict.items()
                      if not _is_structure(k)}
        state_dict.update({k: v for k, v in own.items() if _is_structure(k)})
    else:
        check_structures_used(own, state_dict, source, checkpoint, model)
    merger = [k for k in state_dict if k.startswith(MERGER_PREFIXES)]
    if merger and not any(k.startswith(MERGER_PREFIXES) for k in own):
        raise CheckpointError(
            f'{source} holds MSTM token-merger weights (e.g. {merger[0]}) '
            f'but the config\'s model is {_model_method(model)}, so they '
            'would be dropped; use the MSTM config it was trained with')
    check_finite(state_dict, source)
    if missing or reshaped:
        lacks = (f'{len(missing)} weights of the config\'s model are not '
                 f'in {source} (e.g. {missing[:SHOWN]})' if missing else '')
        shapes = '; '.join(
            f'{k}: {tuple(getattr(state_dict[k], "shape", ()))} in the '
            f'checkpoint, {tuple(own[k].shape)} in the model'
            for k in reshaped[:SHOWN])
        detail = '; '.join(filter(None, (
            lacks, shapes and f'other shapes: {shapes}')))
        if require == 'all':
            raise CheckpointError(f'{detail}; is it a checkpoint of this '
                                  'config (same architecture and img_size)?')
        _warn(f'{detail}: those weights keep their initial values')
        state_dict = {k: v for k, v in state_dict.items()
                      if k not in reshaped}
    unexpected = [k for k in state_dict if k not in own]
    if unexpected:
        _warn(f'ignored {len(unexpected)} entries of {source} the model does '
              f'not have, e.g. {unexpected[:SHOWN]}')
    try:
        model.load_state_dict(state_dict, strict=False)
    except (RuntimeError, ValueError) as err:  # e.g. other compressed units
        raise CheckpointError(f'{source}: {err}') from err
    return checkpoint


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


def save_checkpoint_atomic(checkpoint: dict,
                           path: Union[str, os.PathLike]) -> None:
    """``torch.save`` through :func:`mmseg_pm.apis.outputs.atomic_output`
    (temporary sibling, renamed when complete, umask permissions)."""
    with atomic_output(path) as tmp:
        torch.save(checkpoint, tmp)
