"""The one path by which every tool reads a checkpoint into a model.

:func:`load_checkpoint_into` checks a checkpoint against the model before
loading it: a checkpoint that leaves most of the model's weights missing is
not a checkpoint of this model; one with Prune-and-Merge structures for a
model that has none (or for other blocks) would silently evaluate another
function; NaN/Inf weights are a diverged run. All three are refused with
the fix in the message. Structures searched with another keep_rate,
prune_rate or rule than the config's (tools/prune.py records them) run in
place of the config's values, and a warning line says so. A checkpoint
without structures for a compressed model keeps the built-in lattice
structures (the backbone says so).
Reading the file itself is :mod:`mmseg_pm.utils.checkpoint`.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional, Union

from torch import Tensor, nn

from mmseg_pm.compression.reducer import MERGER_NAME, STRUCTURES_NAME
from mmseg_pm.compression.registry import method_spec
from mmseg_pm.utils.checkpoint import (SHOWN, CheckpointError, check_finite,
                                       checkpoint_state_dict,
                                       load_checkpoint_file)
from mmseg_pm.utils.errors import UsageError

STRUCTURE_KEY = f'{STRUCTURES_NAME}.'
# weights of input-dependent mergers (MSTM's coarse branch)
MERGER_PREFIXES = (f'backbone.{MERGER_NAME}.', f'{MERGER_NAME}.')
# load_checkpoint_into(require=...): every weight, or most of them
REQUIRE = ('all', 'most')


def is_structure_key(key: str) -> bool:
    """Whether a state-dict key (segmentor's or backbone's) is one of a
    static structure's (the reducer's :data:`STRUCTURES_NAME` entries)."""
    return STRUCTURE_KEY in key


def _units(keys) -> List[int]:
    """First blocks of the compressed units whose structures ``keys``
    hold."""
    return sorted({int(k.split(STRUCTURE_KEY)[1].split('.')[0])
                   for k in keys if is_structure_key(k)})


def _warn(message: str) -> None:
    from mmengine.logging import print_log
    print_log(message, logger='current', level=logging.WARNING)


def _prune_summary(checkpoint: dict) -> dict:
    """What tools/prune.py recorded in the checkpoint's meta ({} if
    nothing)."""
    meta = checkpoint.get('meta')
    summary = meta.get('prune_and_merge') if isinstance(meta, dict) else None
    return summary if isinstance(summary, dict) else {}


def _pruned_with(checkpoint: dict) -> str:
    """' (tools/prune.py made it from CONFIG)' when its meta says so."""
    config = _prune_summary(checkpoint).get('config')
    return f' ({config})' if config else ''


def note_structure_settings(model, checkpoint: dict, source: str) -> None:
    """Say in one line when the checkpoint's structures were searched with
    other settings (keep_rate, prune_rate, rule) than the config's: the
    structures run, and the config's values do nothing (tools/prune.py's
    overrides, e.g. ``--keep-rate``, are then tested with the plain
    config)."""
    recorded = _prune_summary(checkpoint).get('compression')
    config = getattr(getattr(model, 'backbone', model), 'compression', None)
    if not isinstance(recorded, dict) or \
            not hasattr(config, 'structure_settings'):
        return
    ours = config.structure_settings()
    differ = [k for k, v in ours.items() if k in recorded and recorded[k] != v]
    if differ:
        theirs = ', '.join(f'{k}={recorded[k]!r}' for k in differ)
        mine = ', '.join(f'{k}={ours[k]!r}' for k in differ)
        _warn(f'{source} holds structures searched with {theirs}; they run '
              f"in place of the config's {mine}, which change nothing here "
              '(prune again to compress otherwise)')


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
    if method is None:
        return 'dense (it compresses no tokens)'
    return f'{method_spec(method).label} (compression method={method!r})'


def _fit(model_state: Dict[str, Tensor], state_dict: dict):
    """(matched, missing, other shapes) of the model's weights (structures
    left out: they have their own rules)."""
    wanted = {k: v for k, v in model_state.items() if not is_structure_key(k)}
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
                      if not is_structure_key(k)}
        state_dict.update({k: v for k, v in own.items() if is_structure_key(k)})
    else:
        check_structures_used(own, state_dict, source, checkpoint, model)
        note_structure_settings(model, checkpoint, source)
    merger = [k for k in state_dict if k.startswith(MERGER_PREFIXES)]
    if merger and not any(k.startswith(MERGER_PREFIXES) for k in own):
        raise CheckpointError(
            f'{source} holds token-merger weights (e.g. {merger[0]}, such '
            'as MSTM\'s coarse branch) but the config\'s model is '
            f'{_model_method(model)}, so they would be dropped; use the '
            'config it was trained with')
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
