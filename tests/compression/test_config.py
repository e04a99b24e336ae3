"""Every setting of every method is validated where it is parsed
(mmseg_pm/compression/config.py): no NaN or infinity in any float, ranges
checked, and settings that would do nothing on the model's token grid
refused with the grid named."""
import dataclasses
import math

import pytest

from mmseg_pm.compression.config import build_reducer, parse_compression
from mmseg_pm.compression.registry import (ModelShape, method_names,
                                           method_spec)
from mmseg_pm.utils.errors import UsageError

SHAPE = ModelShape(num_tokens=64, num_layers=4, embed_dims=32)
GRID = (8, 8)
# method -> the compression= keys that take a float (a method's floats are
# listed here, or test_every_float_setting_is_listed fails)
FLOAT_KEYS = {'pm': ('keep_rate', 'prune_rate'), 'mstm': ('keep_rate', ),
              'tome': (), 'hourglass': ('temperature', 'recon_temperature'),
              'algm': ('threshold', ), 'mpm': ()}


def knob_compression(method: str) -> dict:
    """The method's compression= at the middle of its knob."""
    spec = method_spec(method)
    lo, hi = spec.knob_range(SHAPE)
    return spec.knob_compression((lo + hi) // 2, SHAPE)


def float_fields(config: type) -> list:
    return [f.name for f in dataclasses.fields(config)
            if 'float' in str(f.type)]


@pytest.mark.parametrize('method', method_names())
def test_every_float_setting_is_listed(method):
    assert len(FLOAT_KEYS[method]) == len(
        float_fields(method_spec(method).config))


CASES = [(m, k) for m in method_names() for k in FLOAT_KEYS[m]]


@pytest.mark.parametrize('method,key', CASES,
                         ids=[f'{m}-{k}' for m, k in CASES])
@pytest.mark.parametrize('value', [math.nan, math.inf, -math.inf])
def test_no_nan_or_infinity_in_any_float(method, key, value):
    compression = dict(knob_compression(method), **{key: value})
    with pytest.raises(UsageError, match=f'{key} must be a finite number, '
                       f'got {value}'):
        parse_compression(compression, SHAPE.num_layers)


@pytest.mark.parametrize('method,change,message', [
    ('algm', dict(threshold=1.5), r'threshold must be in \[-1, 1\], got 1.5'),
    ('algm', dict(threshold=-1.01), r'threshold must be in \[-1, 1\]'),
    ('hourglass', dict(temperature=0.0), 'temperature must be > 0'),
    ('hourglass', dict(recon_temperature=-2.0),
     'recon_temperature must be > 0'),
    ('pm', dict(keep_rate=0.0), r'keep_rate must be in \(0, 1\]'),
    ('pm', dict(prune_rate=1.0), r'prune_rate must be in \[0, 1\)'),
    ('mstm', dict(keep_rate=1.5), r'keep_rate must be in \(0, 1\]'),
])
def test_ranges(method, change, message):
    with pytest.raises(UsageError, match=message):
        parse_compression(dict(knob_compression(method), **change),
                          SHAPE.num_layers)


@pytest.mark.parametrize('threshold', [-1.0, 1.0])
def test_the_ends_of_the_algm_threshold_are_taken(threshold):
    parse_compression(dict(knob_compression('algm'), threshold=threshold),
                      SHAPE.num_layers)


@pytest.mark.parametrize('method,change,message', [
    ('algm', dict(window=(16, 16)), r'window=\(16, 16\) is larger than the '
     r'8x8 token grid of img_size=\(64, 64\): no window fits'),
    ('algm', dict(window=(2, 9)), r'window=\(2, 9\) is larger than the 8x8'),
    ('hourglass', dict(clusters=(20, 20)), r'clusters=\(20, 20\) is larger '
     r'than the 8x8 token grid of img_size=\(64, 64\)'),
    ('hourglass', dict(clusters=(9, 1)), r'clusters=\(9, 1\) is larger'),
])
def test_settings_that_do_nothing_on_the_grid_name_it(method, change,
                                                       message):
    parsed = parse_compression(dict(knob_compression(method), **change),
                               SHAPE.num_layers)
    with pytest.raises(UsageError, match=message):
        build_reducer(parsed, GRID, SHAPE.embed_dims, True, (64, 64))


@pytest.mark.parametrize('method,change', [
    ('algm', dict(window=(8, 8))), ('hourglass', dict(clusters=(8, 8)))])
def test_the_whole_grid_is_taken(method, change):
    """A window or a cluster grid as large as the token grid is the
    boundary (Hourglass's is the dense model, as keep_rate=1 is)."""
    parsed = parse_compression(dict(knob_compression(method), **change),
                               SHAPE.num_layers)
    assert build_reducer(parsed, GRID, SHAPE.embed_dims, True, (64, 64))


def test_a_compression_without_blocks_says_what_is_missing():
    with pytest.raises(UsageError, match=r"compression sets \['keep_rate'\] "
                       'but names no blocks to compress: Prune and Merge '
                       r'needs layers=\[...\].*leave compression=None'):
        parse_compression(dict(keep_rate=0.5), SHAPE.num_layers)
    with pytest.raises(UsageError, match="mode 'layer' takes layers"):
        parse_compression(dict(spans=[(0, 1)]), SHAPE.num_layers)
