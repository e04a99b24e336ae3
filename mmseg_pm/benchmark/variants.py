"""The models a benchmark puts side by side, built from mmseg configs.

Every config gives a family of rows that share its weights:

* ``mmseg``     mmseg's own ``VisionTransformer`` (what users run today);
* ``off``       this project's ``PMVisionTransformer`` with compression off;
* ``pm``        the default method (Prune and Merge) at a keep rate with its
  config class's defaults (sparse merge, residual reconstruct,
  content-aware windows): the reference every peer is matched to;
* ``pm-static`` the same with static windows (``assign='static'``);
* ``pm-pinv``   the same structure with the authors' reconstruct (pinv(M)),
  its windows as the config says (content-aware by default: not the
  authors' whole formulation);
* ``pm-matrix`` the same structure with explicit K x N merge / N x K
  reconstruct matrices (the dense-matrix formulation; windows as the
  config says);
* one row per other registered method (``tome``, ``mstm``, ``hourglass``,
  ``algm``, ...: :func:`mmseg_pm.compression.registry.peer_specs`), its
  knob calibrated to the GFLOPs of each ``pm`` row (see
  :mod:`mmseg_pm.benchmark.peers`; a method without fixed shapes is
  calibrated on its mean over synthetic scenes, with the family's weights:
  its counts depend on both, so it is not a default row);
* ``config``    the config's backbone exactly as written.

Compressed rows use the config's compressed blocks (or, when it has none,
the reference method's ``benchmark_fallback``: blocks 2..L-1). Their
structures come from the checkpoint when its keep rate is the config's
own, else from the built-in lattice at the row's keep rate: speed depends
on the token counts only.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from mmseg_pm.compression.registry import (DEFAULT_METHOD, config_default,
                                           method_spec, peer_specs)

# The default method's rows: the reference the peers are matched to
REFERENCE = DEFAULT_METHOD


def _default(name: str):
    return config_default(method_spec(REFERENCE).config, name)


class _Registered(Sequence):
    """Row names read from the registry at every use (a method
    registered later, a test's own, has its rows too)."""

    def __init__(self, names: Callable[[], Tuple[str, ...]]):
        self._names = names

    def __getitem__(self, index):
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __add__(self, other) -> tuple:
        return tuple(self) + tuple(other)

    def __radd__(self, other) -> tuple:
        return tuple(other) + tuple(self)

    def __repr__(self) -> str:
        return repr(self._names())


def reference_variants() -> Dict[str, dict]:
    """The reference method's rows (its spec's ``benchmark_variants``):
    what each one sets in the compression dict."""
    return {v.name: dict(v.settings)
            for v in method_spec(REFERENCE).benchmark_variants}


def _reference_label(variant: str) -> str:
    [label] = [v.label for v in method_spec(REFERENCE).benchmark_variants
               if v.name == variant]
    return label


DENSE_VARIANTS = ('mmseg', 'off')
PEER_VARIANTS = _Registered(lambda: tuple(s.name for s in peer_specs()))
VARIANTS = _Registered(lambda: DENSE_VARIANTS + tuple(reference_variants())
                       + tuple(PEER_VARIANTS) + ('config', ))
# peers whose counts depend on the image are calibrated on the weights,
# which random weights cannot do: asked for, not run by default
DEFAULT_VARIANTS = _Registered(
    lambda: DENSE_VARIANTS + tuple(
        v.name for v in method_spec(REFERENCE).benchmark_variants
        if v.by_default) + tuple(
        s.name for s in peer_specs() if s.fixed_shapes))


def image_dependent_counts(variant: str) -> bool:
    """Whether a row's token counts (and so its FLOPs) depend on the
    image: a peer whose method has no fixed shapes."""
    return variant in PEER_VARIANTS and not method_spec(variant).fixed_shapes


@dataclass(frozen=True)
class ModelSpec:
    """One row: a config, the variant of its backbone and its weights.

    Peers carry the PM keep rate whose GFLOPs they are matched to in
    ``keep_rate``, their calibrated ``compression`` dict and the
    calibration's ``match`` (knob, setting in words, GFLOPs, target, and
    ``unreachable``: why no setting reaches it, or None).
    """

    config: str
    variant: str
    checkpoint: Optional[str] = None
    keep_rate: Optional[float] = None
    img_size: Optional[Tuple[int, int]] = None
    compression: Optional[dict] = None
    match: Optional[dict] = None

    @property
    def unreachable(self) -> Optional[str]:
        return (self.match or {}).get('unreachable')

    @property
    def impl(self) -> Optional[str]:
        return reference_variants().get(self.variant, {}).get('impl')

    @property
    def reconstruct(self) -> Optional[str]:
        return reference_variants().get(self.variant, {}).get('reconstruct')

    @property
    def model_name(self) -> str:
        return config_stem(self.config)

    @property
    def label(self) -> str:
        if self.variant in reference_variants():
            return _reference_label(self.variant).format(
                keep_rate=self.keep_rate)
        if self.variant in PEER_VARIANTS:
            label = f'{method_spec(self.variant).label} at PM keep ' \
                f'{self.keep_rate:g} GFLOPs'
            return label + (': cannot reach' if self.unreachable else '')
        return {'mmseg': 'mmseg VisionTransformer',
                'off': 'PM, compression off',
                'config': 'as configured'}[self.variant]


def config_stem(config: str) -> str:
    """``mmseg::a/b.py`` or ``configs/a/b.py`` -> ``b``."""
    return Path(config.split('::')[-1]).stem


def parse_config_arg(arg: str) -> Tuple[str, Optional[str]]:
    """``CONFIG[:CHECKPOINT]`` -> (config, checkpoint or None)."""
    cut = arg.find('.py:')
    if cut < 0:
        return arg, None
    return arg[:cut + 3], arg[cut + 4:] or None


def load_config(config: str, cfg_options: Optional[dict] = None):
    """:func:`mmseg_pm.apis.config.load_config` (its checks and error
    texts), read once per config and options: every row of a config reads
    it; each caller gets its own copy."""
    key = (config, repr(sorted((cfg_options or {}).items())))
    if key not in _LOADED:
        from mmseg_pm.apis.config import load_config as read
        _LOADED[key] = read(config, dict(cfg_options or {}))
    return copy.deepcopy(_LOADED[key])


_LOADED: dict = {}


def pm_compression(backbone_cfg: dict) -> Optional[dict]:
    """The config's Prune-and-Merge ``compression`` dict, or None."""
    comp = backbone_cfg.get('compression')
    if comp is None or comp.get('method', DEFAULT_METHOD) != REFERENCE:
        return None
    return dict(comp)


def expand_specs(config: str, checkpoint: Optional[str],
                 variants: Sequence[str],
                 keep_rates: Optional[Sequence[float]],
                 cfg_options: Optional[dict] = None) -> Tuple[
                     List[ModelSpec], List[str]]:
    """Rows of one config, and notes on rows left out (and why): the dense
    rows first, then per keep rate its PM rows and its peers (peers still
    to be calibrated: :func:`mmseg_pm.benchmark.peers.calibrate_peers`)."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f'unknown variants {unknown}; use some of '
                         f'{VARIANTS}')
    cfg = load_config(config, cfg_options)
    backbone = cfg.model.backbone
    notes = []
    own = backbone.get('compression')
    own_pm = pm_compression(backbone)
    if keep_rates is None:
        keep_rates = [own_pm.get('keep_rate', _default('keep_rate'))] \
            if own_pm else [0.7, 0.5]
    specs = [ModelSpec(config, v, checkpoint) for v in variants
             if v in DENSE_VARIANTS]
    if 'config' in variants:
        specs.append(ModelSpec(config, 'config', checkpoint,
                               keep_rate=(own or {}).get('keep_rate')))
    compressed = [v for v in variants
                  if v in reference_variants() or v in PEER_VARIANTS]
    if compressed and own is not None and own_pm is None:
        notes.append(f'{config_stem(config)}: no {", ".join(compressed)} '
                     f'rows: its compression method is '
                     f'{own.get("method")!r}, not Prune-and-Merge (use '
                     '--variants config)')
        compressed = []
    for rate in keep_rates if compressed else []:
        if rate >= 1:
            notes.append(f'keep rate {rate:g} is the uncompressed model: see '
                         'the mmseg / off rows')
            continue
        specs += [ModelSpec(config, v, checkpoint, keep_rate=float(rate))
                  for v in compressed]
    return specs, sorted(set(notes))


def backbone_config(spec: ModelSpec, backbone: dict) -> dict:
    """The backbone config of ``spec``'s variant."""
    backbone = copy.deepcopy(dict(backbone))
    backbone.pop('init_cfg', None)
    if spec.img_size is not None:
        backbone['img_size'] = tuple(spec.img_size)
    if spec.variant == 'config':
        return backbone
    if spec.variant == 'mmseg':
        backbone['type'] = 'VisionTransformer'
        backbone.pop('compression', None)
        return backbone
    backbone['type'] = 'PMVisionTransformer'
    if spec.variant == 'off':
        backbone['compression'] = None
    elif spec.variant in PEER_VARIANTS:
        if spec.compression is None or spec.unreachable:
            raise ValueError(f'{spec.label}: not calibrated or cannot reach '
                             'its target; nothing to build')
        backbone['compression'] = copy.deepcopy(dict(spec.compression))
    else:
        comp = pm_compression(backbone)
        if comp is None:
            comp = method_spec(REFERENCE).benchmark_fallback(
                backbone.get('num_layers', 12))
        comp.update(keep_rate=spec.keep_rate,
                    **reference_variants()[spec.variant])
        backbone['compression'] = comp
    return backbone


def build_segmentor(spec: ModelSpec, cfg_options: Optional[dict] = None,
                    backbone_only: bool = False) -> nn.Module:
    """The segmentor of ``spec`` (or only its backbone): random weights,
    eval mode, on the CPU (:func:`mmseg_pm.apis.build_segmentor`
    on the config with the row's backbone)."""
    from mmseg_pm.apis import build_segmentor as build
    cfg = load_config(spec.config, cfg_options)
    cfg.model.backbone = backbone_config(spec, cfg.model.backbone)
    model = build(cfg)
    return model.backbone if backbone_only else model


def without_compressors(state: Dict[str, torch.Tensor]
                        ) -> Dict[str, torch.Tensor]:
    from mmseg_pm.models.checkpoint import is_structure_key
    return {k: v for k, v in state.items() if not is_structure_key(k)}


def checkpoint_state(path: str, model: Optional[nn.Module] = None
                     ) -> Dict[str, torch.Tensor]:
    """The weights of a checkpoint, checked against ``model`` (a model of
    its config at its own img_size) when given: every weight must be in
    it (the rows pick their structures themselves)."""
    from mmseg_pm.models.checkpoint import load_checkpoint_into
    from mmseg_pm.utils.checkpoint import (checkpoint_state_dict,
                                           load_checkpoint_file)
    checkpoint = load_checkpoint_file(path)
    if model is not None:
        load_checkpoint_into(model, checkpoint, source=path,
                             structures='ignore')
    return checkpoint_state_dict(checkpoint)


def share_weights(model: nn.Module, weights: Dict[str, torch.Tensor],
                  keep_structures: bool) -> None:
    """Load the shared ``weights`` into ``model``.

    The checkpoint's structures (the ``STRUCTURES_NAME`` entries) are used
    only when ``keep_structures``; otherwise the model keeps its own.
    Tensors whose shape differs (a resized pos_embed) are left as they
    are.
    """
    from mmseg_pm.models.checkpoint import is_structure_key
    own = model.state_dict()
    state = without_compressors(weights)
    state = {k: v for k, v in state.items()
             if k in own and own[k].shape == v.shape}
    compressors = {k: v for k, v in own.items() if is_structure_key(k)}
    if keep_structures:
        saved = {k: v for k, v in weights.items() if is_structure_key(k)}
        if set(saved) == set(compressors):
            compressors = saved
    state.update(compressors)
    model.load_state_dict(state, strict=False)


def keeps_checkpoint_structures(spec: ModelSpec,
                                cfg_options: Optional[dict] = None) -> bool:
    """Whether ``spec`` uses its checkpoint's structures: a PM row at the
    config's own keep rate and reconstruct (other rows get the lattice)."""
    if not spec.checkpoint or spec.variant not in reference_variants():
        return False
    comp = pm_compression(load_config(spec.config, cfg_options).model.backbone)
    if comp is None:
        return False
    own = dict(keep_rate=comp.get('keep_rate', _default('keep_rate')),
               reconstruct=comp.get('reconstruct', _default('reconstruct')))
    return own == dict(keep_rate=spec.keep_rate,
                       reconstruct=spec.reconstruct)


def build_family(specs: Sequence[ModelSpec],
                 cfg_options: Optional[dict] = None,
                 seed: int = 0,
                 weights: Optional[Dict[str, torch.Tensor]] = None
                 ) -> List[nn.Module]:
    """Segmentors for ``specs`` of one config, all with the same weights:
    ``weights``, else the checkpoint's, else those of the first row built
    (pass ``family_weights`` of a built family to add rows to it)."""
    models = []
    for spec in specs:
        torch.manual_seed(seed)
        model = build_segmentor(spec, cfg_options)
        if weights is None:
            weights = family_weights(spec, model)
        share_weights(model, weights,
                      keeps_checkpoint_structures(spec, cfg_options))
        models.append(model)
    return models


def family_weights(spec: ModelSpec, model: nn.Module
                   ) -> Dict[str, torch.Tensor]:
    """The weights every row of ``spec``'s family shares: its checkpoint's
    (checked against ``model`` when it is at the config's own img_size),
    or those of ``model`` (the family's first row)."""
    if spec.checkpoint:
        fits = model if spec.img_size is None else None
        return checkpoint_state(spec.checkpoint, fits)
    return model.state_dict()
