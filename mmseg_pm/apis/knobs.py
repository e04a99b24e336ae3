"""The compression variants of the quality study and the benchmark, each at
one integer knob: the backbone's ``compression=`` dict at a knob value
(:func:`compression_for`), so that a study row and a benchmark row of a
method mean the same model. The FLOPs search over the knob is
:mod:`mmseg_pm.apis.calibration`.

Every registered method has one integer knob whose FLOPs are monotone in
it; what it sets and how it is calibrated is the method's description
(:class:`mmseg_pm.compression.registry.MethodSpec`: ``knob``,
``knob_range``, ``knob_compression``, ``knob_text``, ``calibration``),
declared next to its reducer. Here: the study's variants of the default
method (Prune and Merge: unit layout, window rule, reconstruction, window
assignment and centre placement, each left out taking its config class's
default) and one variant per other registered method, named as the method.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from mmseg_pm.compression.registry import (DEFAULT_METHOD, MethodSpec,
                                           ModelShape, config_default,
                                           method_spec, peer_specs)
from mmseg_pm.compression.search import DEFAULT_PLACEMENT


@dataclass(frozen=True)
class Method:
    """One compression variant of the study: the registered method
    ``method`` with the knob ``options`` it changes (every other option is
    the method's config class default) and, for a method with structures,
    the centre ``placement`` (mmseg_pm.compression.search)."""

    name: str
    label: str
    method: str
    marker: str  # matplotlib marker of its points
    options: Dict[str, object] = field(default_factory=dict)
    placement: str = DEFAULT_PLACEMENT
    # how a method with structures shares centres among its units (None:
    # the mode's default, mmseg_pm.apis.prune.default_ranking)
    ranking: Optional[str] = None

    @property
    def spec(self) -> MethodSpec:
        return method_spec(self.method)

    def option(self, name: str):
        """A knob option as this variant sets it (else the config's
        default)."""
        if name in self.options:
            return self.options[name]
        return config_default(self.spec.config, name)


def _pm(name: str, label: str, marker: str, placement: str = DEFAULT_PLACEMENT,
        ranking: Optional[str] = None, **options) -> Method:
    return Method(name, label, DEFAULT_METHOD, marker, options, placement,
                  ranking)


# The default method's variants (each writes out the settings that define
# it; every other one is PMConfig's default) and one variant per other
# registered method.
METHODS: Dict[str, Method] = {m.name: m for m in (
    _pm('pm-row', "PM per layer, row rule, authors' pinv", 'o', 'score',
        reconstruct='pinv', assign='static'),
    _pm('pm-nearest', 'PM per layer, nearest rule, pinv', 's', 'score',
        rule='nearest', reconstruct='pinv', assign='static'),
    _pm('pm-span', 'PM span mode, pinv', 'D', 'score', mode='span',
        reconstruct='pinv', assign='static'),
    _pm('random', 'PM random centres, pinv (floor)', 'X', 'random',
        reconstruct='pinv', assign='static'),
    _pm('res-row', 'PM per layer, row rule, residual', 'o', 'score',
        reconstruct='residual', assign='static'),
    _pm('res-span', 'PM span mode, residual', 'D', 'score', mode='span',
        reconstruct='residual', assign='static'),
    _pm('res-random', 'PM random centres, residual, static windows', 'X',
        'random', reconstruct='residual', assign='static'),
    _pm('res-content', 'PM random centres, residual, content-aware windows, '
        'block 0 dense', 'p'),
    _pm('res-content-all', 'PM random centres, residual, content-aware '
        'windows, every block (the default)', 'H', first_block=0),
    _pm('res-content-all-prop', 'PM random centres, residual, '
        'content-aware windows, every block, proportional attention', '<',
        first_block=0, proportional_attention=True),
    _pm('res-content-even', 'PM random centres, residual, content-aware '
        'windows, the same centres in every block', '>', ranking='layer'),
    _pm('res-content-k5', 'PM random centres, residual, content-aware '
        'windows over 5 x 5 neighbours', '8', neighbourhood=5),
    _pm('res-content-k7', 'PM random centres, residual, content-aware '
        'windows over 7 x 7 neighbours', 'd', neighbourhood=7),
    _pm('res-nearest', 'PM scored centres, nearest rule, residual', 's',
        'score', rule='nearest', reconstruct='residual', assign='static'),
    _pm('res-spread', 'PM spread centres, nearest rule, residual', 'P',
        'spread', rule='nearest', reconstruct='residual', assign='static'),
    _pm('res-lattice', 'PM lattice centres, nearest rule, residual', 'h',
        'lattice', rule='nearest', reconstruct='residual', assign='static'),
    _pm('res-span-spread', 'PM span mode, spread centres, residual', '*',
        'spread', mode='span', rule='nearest', reconstruct='residual',
        assign='static'),
    *(Method(s.name, s.label, s.name, s.marker) for s in peer_specs()),
)}


def model_shape(num_tokens: int, num_layers: int,
                embed_dims: Optional[int] = None) -> ModelShape:
    return ModelShape(num_tokens, num_layers, embed_dims)


def knob_range(method: str, num_tokens: int, num_layers: int,
               embed_dims: Optional[int] = None) -> Tuple[int, int]:
    """Inclusive range of the variant's knob (some methods' settings
    depend on the width, ``embed_dims``)."""
    return METHODS[method].spec.knob_range(
        model_shape(num_tokens, num_layers, embed_dims))


def compression_for(method: str, knob: int, num_layers: int,
                    num_tokens: int, prune_rate: float = 0.0,
                    embed_dims: Optional[int] = None) -> dict:
    """The backbone's ``compression=`` dict of a variant at a knob value
    (``prune_rate``: for a method whose config has one)."""
    m = METHODS[method]
    options = dict(m.options)
    if 'prune_rate' in {f.name for f in dataclasses.fields(m.spec.config)}:
        options['prune_rate'] = prune_rate
    return m.spec.knob_compression(
        knob, model_shape(num_tokens, num_layers, embed_dims), **options)


def knob_text(method: str, knob: int, num_tokens: int,
              num_layers: int, embed_dims: Optional[int] = None) -> str:
    """The calibrated knob in words, for the table."""
    return METHODS[method].spec.knob_text(
        knob, model_shape(num_tokens, num_layers, embed_dims))
