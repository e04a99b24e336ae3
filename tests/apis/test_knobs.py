"""The study's and the benchmark's knobs (mmseg_pm.apis.knobs, each
method's knob from its description) and the FLOPs calibration over them
(mmseg_pm.apis.calibration)."""
import pytest

from mmseg_pm.apis.calibration import (CalibrationError, calibrate_knob,
                                       check_within)
from mmseg_pm.apis.knobs import compression_for
from mmseg_pm.compression.algm import algm_layers
from mmseg_pm.compression.mstm import mstm_layers
from mmseg_pm.compression.merge import span_units
from mmseg_pm.compression.registry import keep_rate_for
from mmseg_pm.compression.tome import tome_schedule


def test_knobs_mean_what_they_say():
    for n in (36, 64, 144, 1024):
        assert all(int(keep_rate_for(k, n) * n) == k for k in range(1, n + 1))
    assert tome_schedule(11, 4) == [3, 3, 3, 2]
    assert sum(tome_schedule(577, 8)) == 577
    assert span_units(8) == [(1, 4), (5, 7)]
    assert span_units(2) == [(1, 1)]
    assert mstm_layers(8) == [1, 3, 5]
    assert algm_layers(12) == (0, 4) and algm_layers(8) == (0, 2)
    assert compression_for('algm', 880, 8, 144)['threshold'] == 0.88
    assert compression_for('tome', 5, 4, 64)['r'] == [2, 1, 1, 1]
    assert compression_for('pm-nearest', 16, 4, 64)['rule'] == 'nearest'
    assert compression_for('pm-row', 16, 4, 64)['reconstruct'] == 'pinv'
    spread = compression_for('res-span-spread', 16, 4, 64)
    assert spread['reconstruct'] == 'residual' and spread['mode'] == 'span'
    # the study's default compresses every block, its block-0-dense twin
    # all but block 0; first_block is a layout, not a config key
    every = compression_for('res-content-all', 16, 4, 64)
    assert every['layers'] == [0, 1, 2, 3] and 'first_block' not in every
    assert compression_for('res-content', 16, 4, 64)['layers'] == [1, 2, 3]


@pytest.mark.parametrize('options, message', [
    (dict(first_block=2), r'first_block must be one of \(0, 1\)'),
    (dict(first_block=0, mode='span'), "option of mode 'layer'")])
def test_pm_knob_refuses_a_layout_it_cannot_build(options, message):
    from mmseg_pm.compression.registry import ModelShape, method_spec
    spec = method_spec('pm')
    with pytest.raises(ValueError, match=message):
        spec.knob_compression(8, ModelShape(64, 4, None), **options)


def test_calibrate_knob_finds_the_nearest_value_either_direction():
    def falling(k):  # like ToMe: more merges, fewer FLOPs
        return 1000 - 7 * k

    calls = []

    def rising(k):  # like a keep count
        calls.append(k)
        return 3 * k * k

    assert calibrate_knob(falling, 0, 100, 500) == (71, 503)
    assert calibrate_knob(rising, 1, 1000, 30000) == (100, 30000)
    assert len(calls) <= 12  # bisection, not a scan
    assert calibrate_knob(rising, 1, 10, 10 ** 9)[0] == 10  # clamps
    with pytest.raises(CalibrationError, match='outside what'):
        check_within('tome', 0.9e9, 1e9, 0.02)
