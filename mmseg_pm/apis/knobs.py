"""The compression variants of the quality study and the benchmark, each at
one integer knob: the backbone's ``compression=`` dict at a knob value
(:func:`compression_for`), so that a study row and a benchmark row of a
method mean the same model. The FLOPs search over the knob is
:mod:`mmseg_pm.apis.calibration`.

Every registered method has one integer knob whose FLOPs are monotone in
it; what it sets and how it is calibrated is the method's description
(:class:`mmseg_pm.compression.registry.MethodSpec`: ``knob``,
``knob_range``, ``knob_compression``, ``knob_text``, ``calibration``),
declared next to its reducer, with its study variants (Prune and Merge's:
unit layout, window rule, reconstruction, window assignment and centre
placement, each left out taking its config class's default; a method that
lists none has one, named as the method). Here: those variants, read from
the registry.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple

from mmseg_pm.compression.registry import (MethodSpec, ModelShape,
                                           config_default, method_spec,
                                           method_specs)
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


def study_methods() -> Dict[str, Method]:
    """Every registered method's study variants (its spec's
    ``study_rows``), in registration order."""
    return {v.name: Method(v.name, v.label, spec.name, v.marker,
                           dict(v.options),
                           v.placement or DEFAULT_PLACEMENT, v.ranking)
            for spec in method_specs() for v in spec.study_rows()}


class _StudyMethods(Mapping):
    """:func:`study_methods`, read from the registry at every use (a
    method registered later has its rows here too)."""

    def __getitem__(self, name: str) -> Method:
        return study_methods()[name]

    def __iter__(self):
        return iter(study_methods())

    def __len__(self) -> int:
        return len(study_methods())


# The study's variants: every registered method's (its spec's
# study_variants; one named as the method where it lists none).
METHODS: Mapping[str, Method] = _StudyMethods()


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
