"""The data checks' pieces against mmseg's own: the labels mmseg's
LoadAnnotations makes of an annotation; every pair checked, each file read
once per process."""
import os

import numpy as np
import pytest
from mmengine.config import Config
from PIL import Image

from mmseg.datasets.transforms import LoadAnnotations

from mmseg_pm.apis import data as data_check
from mmseg_pm.apis.data import DataError, check_datasets, mmseg_labels
from mmseg_pm.datasets import make_synthetic_ade
from tests.helpers import DENSE_TINY


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


@pytest.fixture
def data_config(tmp_path):
    """The synthetic Segmenter's config on 12 training and 40 validation
    images of 16 x 16 (more than any sample of 32)."""
    data = make_synthetic_ade(tmp_path / 'data', num_train=12, num_val=40,
                              size=(16, 16), seed=0, progress=False)
    cfg = Config.fromfile(str(DENSE_TINY))
    for split in ('train', 'val'):
        cfg[f'{split}_dataloader'].dataset.data_root = data['root']
    return cfg, data


def test_every_pair_is_checked(data_config):
    """A bad label in any one annotation is found, wherever it sits."""
    cfg, data = data_config
    annotations = sorted(os.listdir(data['validation_ann_dir']))
    for index in (0, 17, 39):
        path = os.path.join(data['validation_ann_dir'], annotations[index])
        good = Image.open(path).copy()
        bad = np.array(good)
        bad[3, 5] = 200  # class index 199 of 150
        Image.fromarray(bad).save(path)
        with pytest.raises(DataError, match=f'the annotation {path} holds '
                           'the label 200, class index 199, but there are '
                           '150 classes'):
            check_datasets(cfg, ['val_dataloader'])
        good.save(path)
    check_datasets(cfg, ['train_dataloader', 'val_dataloader'])


def test_each_file_is_read_once(data_config, monkeypatch):
    """Checking again (train, then test; every row of the study) reads no
    file again, unless it changed."""
    cfg, data = data_config
    decoded = []
    decode = data_check._decode
    monkeypatch.setattr(data_check, '_decode', lambda path, *args: (
        decoded.append(path), decode(path, *args))[1])
    loaders = ['train_dataloader', 'val_dataloader']
    check_datasets(cfg, loaders)
    assert len(decoded) == len(set(decoded)) == 2 * (12 + 40)
    check_datasets(cfg, loaders)
    assert len(decoded) == 2 * (12 + 40)
    changed = os.path.join(data['training_ann_dir'],
                           sorted(os.listdir(data['training_ann_dir']))[4])
    Image.fromarray(np.full((16, 16), 3, np.uint8)).save(changed)
    os.utime(changed, ns=(1, 1))  # another time, whatever the clock says
    check_datasets(cfg, loaders)
    image = os.path.join(data['training_img_dir'],
                         os.path.basename(changed)[:-4] + '.jpg')
    assert decoded[2 * (12 + 40):] == [image, changed]  # that pair only
