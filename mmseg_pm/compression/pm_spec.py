"""Prune and Merge's description (:class:`~.registry.MethodSpec`) and its
knob. It belongs next to the reducer (merge.py) and moves there when
merge.py is split by concern; until then it lives here so that merge.py
stays as it is.

The knob: the centres per unit, ``k`` of the N patch tokens (before the
global ranking shares them out among the layers; the placement moves
centres, never their counts, so every placement has the same FLOPs). Its
options are the compression settings a study variant changes (``mode``,
``rule``, ``reconstruct``, ``assign``, ``prune_rate``); each one left out
takes :class:`~.config.PMConfig`'s default.
"""
from __future__ import annotations

import math
from typing import List, Tuple

from .registry import (DEFAULT_METHOD, MethodSpec, ModelShape,
                       compressible_blocks, config_default, keep_rate_for,
                       method_spec)

# the compression settings a knob value may be given with
KNOB_OPTIONS = ('mode', 'rule', 'reconstruct', 'assign', 'prune_rate')


def pm_layers(num_layers: int) -> List[int]:
    """Blocks Prune and Merge compresses: all but block 0 (the released
    Segmenter configs likewise leave the first blocks dense)."""
    return compressible_blocks(num_layers)


def span_units(num_layers: int) -> List[Tuple[int, int]]:
    """The span-mode units: blocks 1..L-1 in two consecutive halves (the
    first one longer when odd), each with one shared structure."""
    blocks = pm_layers(num_layers)
    if len(blocks) < 2:
        return [(blocks[0], blocks[-1])]
    cut = blocks[0] + math.ceil(len(blocks) / 2) - 1
    return [(blocks[0], cut), (cut + 1, blocks[-1])]


def _knob_range(shape: ModelShape) -> Tuple[int, int]:
    return 1, shape.num_tokens


def _knob_compression(knob: int, shape: ModelShape, **options) -> dict:
    unknown = sorted(set(options) - set(KNOB_OPTIONS))
    if unknown:
        raise ValueError(f'unknown Prune-and-Merge knob options {unknown}; '
                         f'expected some of {KNOB_OPTIONS}')
    config = method_spec(SPEC.name).config
    o = {k: options[k] if k in options else config_default(config, k)
         for k in KNOB_OPTIONS}
    units = dict(spans=span_units(shape.num_layers)) if o['mode'] == 'span' \
        else dict(layers=pm_layers(shape.num_layers))
    return dict(mode=o['mode'], **units,
                keep_rate=keep_rate_for(knob, shape.num_tokens),
                prune_rate=o['prune_rate'], rule=o['rule'],
                reconstruct=o['reconstruct'], assign=o['assign'])


def _knob_text(knob: int, shape: ModelShape) -> str:
    return f'keep {knob}/{shape.num_tokens} ({knob / shape.num_tokens:.2f})'


SPEC = MethodSpec(
    name=DEFAULT_METHOD, label='Prune and Merge',
    knob=('the centres per unit, k of the N patch tokens (the placement '
          'moves centres, never their counts: every placement has the same '
          'FLOPs)'),
    knob_range=_knob_range, knob_compression=_knob_compression,
    knob_text=_knob_text,
    # content-aware windows (the default): fixed centres and counts, each
    # image its own windows; assign='static' merges the same way for all
    fixed_shapes=True, per_image_merges=True, exports=True, structures=True,
    marker='o',
    picture_note='content-aware windows: centres fixed, windows of this '
                 'image')
