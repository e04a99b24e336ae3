"""The configs the library builds (mmseg_pm.apis.config)."""
import pytest

from mmseg_pm.apis.config import scaled_schedule


def test_scaled_schedule_stretches_warm_up_and_decay():
    warm = dict(type='LinearLR', start_factor=1e-3, begin=0, end=1000,
                by_epoch=False)
    poly = dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1000,
                end=20000, by_epoch=False)
    assert scaled_schedule([warm, poly], 20000, 60) == [
        dict(warm, end=3), dict(poly, begin=3, end=60)]
    # the warm-up keeps one iteration at least, and still ends where the
    # decay begins
    assert scaled_schedule([warm, poly], 20000, 2) == [
        dict(warm, end=1), dict(poly, begin=1, end=2)]
    # one iteration: the warm-up's, the decay has none left
    assert scaled_schedule([warm, poly], 20000, 1) == [dict(warm, end=1)]
    assert warm['end'] == 1000  # the input is left alone
    with pytest.raises(ValueError, match=r'by_epoch=False'):
        scaled_schedule([dict(poly, by_epoch=True)], 20000, 60)
