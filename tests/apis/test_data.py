"""The data checks' pieces against mmseg's own: the labels mmseg's
LoadAnnotations makes of an annotation, and the sample of pairs decoded."""
import numpy as np
import pytest
from PIL import Image

from mmseg.datasets.transforms import LoadAnnotations

from mmseg_pm.apis.data import mmseg_labels, sample_indices


@pytest.mark.parametrize('reduce_zero_label', [False, True])
@pytest.mark.parametrize('label_map', [None, {0: 3, 3: 0, 7: 255}])
def test_labels_are_those_mmseg_loads(tmp_path, reduce_zero_label,
                                      label_map):
    """Every stored value 0..255 through mmseg's LoadAnnotations (the
    oracle) and through mmseg_labels."""
    stored = np.arange(256, dtype=np.uint8).reshape(16, 16)
    path = tmp_path / 'annotation.png'
    Image.fromarray(stored).save(path)
    loaded = LoadAnnotations(reduce_zero_label=reduce_zero_label)(dict(
        seg_map_path=str(path), reduce_zero_label=reduce_zero_label,
        label_map=label_map, seg_fields=[]))['gt_seg_map']
    np.testing.assert_array_equal(
        mmseg_labels(stored, reduce_zero_label, label_map), loaded)


def test_the_sample_spreads_over_the_data_set():
    assert sample_indices(5, 32) == [0, 1, 2, 3, 4]
    picked = sample_indices(1000, 32)
    assert len(picked) == 32 and picked[0] == 0 and picked[-1] == 999
    gaps = np.diff(picked)
    assert gaps.min() >= 32 and gaps.max() <= 33
