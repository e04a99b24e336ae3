"""The peers at the GFLOPs of each Prune-and-Merge row.

Every other registered method's knob (ToMe's merges, MSTM's keep rate,
Hourglass's (alpha, h x w), ...: each method's description) is calibrated
to the counted GFLOPs of the ``pm`` row of the same keep rate with the
quality study's knobs (:mod:`mmseg_pm.apis.knobs`) and bisection
(:mod:`mmseg_pm.apis.calibration`), so a benchmark row and a study row of
a method mean the same model. FLOPs are counted as everywhere else
(``count_flops``, one image, the backbone: the decode head is the same for
every method, all of them give it the full grid back).

A peer whose nearest setting misses the target by more than the tolerance
(ToMe merges at most half the tokens of a block) becomes a row that says so,
with the nearest GFLOPs it reaches; it is neither dropped nor timed.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Callable, Dict, List, Optional, Sequence

from mmseg_pm.apis.calibration import (CalibrationError, calibrate_knob,
                                       check_within)
from mmseg_pm.apis.knobs import compression_for, knob_range, knob_text

from mmseg_pm.compression.registry import method_spec

from .variants import PEER_VARIANTS, ModelSpec

DEFAULT_TOLERANCE = 0.02


def calibrate_peer(spec: ModelSpec, target: float,
                   flops_of: Callable[[dict], float], num_tokens: int,
                   num_layers: int,
                   tolerance: float = DEFAULT_TOLERANCE,
                   embed_dims: Optional[int] = None) -> ModelSpec:
    """``spec`` (a peer's row; some methods' settings depend on the
    width, ``embed_dims``) with the compression whose FLOPs
    (``flops_of(compression dict)``) are nearest ``target``; ``match``
    records the knob, both FLOPs and, when the nearest misses by more than
    ``tolerance``, why it is unreachable."""
    method = spec.variant

    def compression(knob: int) -> dict:
        return compression_for(method, knob, num_layers, num_tokens,
                               embed_dims=embed_dims)

    knob, flops = calibrate_knob(lambda k: flops_of(compression(k)),
                                 *knob_range(method, num_tokens, num_layers,
                                             embed_dims), target)
    match = dict(knob=knob,
                 setting=knob_text(method, knob, num_tokens, num_layers,
                                   embed_dims),
                 gflops=flops / 1e9, target_gflops=target / 1e9,
                 deviation_pct=100 * (flops / target - 1),
                 tolerance_pct=100 * tolerance, unreachable=None)
    try:
        if not method_spec(method).discrete:  # else the nearest, as it is
            check_within(method_spec(method).label, flops, target,
                         tolerance)
    except CalibrationError as err:
        match['unreachable'] = str(err)
    return dataclasses.replace(spec, compression=compression(knob),
                               match=match)


def calibrate_peers(specs: Sequence[ModelSpec], targets: Dict[float, float],
                    flops_of: Callable[[dict], float], num_tokens: int,
                    num_layers: int,
                    tolerance: float = DEFAULT_TOLERANCE,
                    embed_dims: Optional[int] = None) -> List[ModelSpec]:
    """Every peer of ``specs`` calibrated to ``targets[its keep rate]``
    (FLOPs of the PM row); other specs unchanged. ``flops_of`` is called
    once per distinct compression dict."""
    cache: Dict[str, float] = {}

    def cached(compression: dict) -> float:
        key = json.dumps(compression, sort_keys=True)
        if key not in cache:
            cache[key] = float(flops_of(compression))
        return cache[key]

    out = []
    for spec in specs:
        if spec.variant in PEER_VARIANTS:
            if spec.keep_rate not in targets:
                raise ValueError(f'{spec.label}: no PM row at keep rate '
                                 f'{spec.keep_rate:g} to match')
            spec = calibrate_peer(spec, targets[spec.keep_rate], cached,
                                  num_tokens, num_layers, tolerance,
                                  embed_dims)
        out.append(spec)
    return out
