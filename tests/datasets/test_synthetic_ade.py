"""Tests for the synthetic ADE20K-format data set generator."""
import importlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from mmseg_pm.datasets.synthetic_ade import (CLASS_IDS, CLASS_NAMES,
                                             IGNORE_ID, MANIFEST_NAME,
                                             TRAIN_LABELS, make_synthetic_ade)

SIZE = (32, 48)
POLE, BALL = 94, 120
REPO = Path(__file__).resolve().parents[2]


def _make(root, **kwargs):
    params = dict(num_train=4, num_val=2, size=SIZE, seed=0)
    params.update(kwargs)
    return make_synthetic_ade(root, **params)


def _stems(directory: Path, suffix: str):
    return sorted(p.stem for p in directory.glob(f'*{suffix}'))


def _labels(directory: Path):
    return [
        cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        for p in sorted(directory.glob('*.png'))
    ]


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    return _make(tmp_path_factory.mktemp('synth') / 'ade')


@pytest.fixture(scope='module')
def labels(tmp_path_factory):
    info = _make(
        tmp_path_factory.mktemp('synth_big') / 'ade',
        num_train=24,
        num_val=0,
        size=(64, 64))
    return _labels(Path(info['training_ann_dir']))


def test_layout_and_counts(dataset):
    root = Path(dataset['root'])
    for split, n, tag in (('training', 4, 'train'), ('validation', 2,
                                                     'val')):
        imgs = _stems(root / 'images' / split, '.jpg')
        anns = _stems(root / 'annotations' / split, '.png')
        assert imgs == anns
        assert imgs == [f'ADE_{tag}_{i:08d}' for i in range(1, n + 1)]
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    assert manifest['size'] == list(SIZE)
    assert manifest['class_ids'] == list(CLASS_IDS)
    assert not dataset['reused']


def test_image_and_label_format(dataset):
    root = Path(dataset['root'])
    img = cv2.imread(str(root / 'images/training/ADE_train_00000001.jpg'))
    ann = cv2.imread(
        str(root / 'annotations/training/ADE_train_00000001.png'),
        cv2.IMREAD_UNCHANGED)
    assert img.shape == (*SIZE, 3)
    assert ann.shape == SIZE and ann.dtype == np.uint8
    assert set(np.unique(ann)) <= {IGNORE_ID, *CLASS_IDS}
    assert (ann == IGNORE_ID).any()


def test_deterministic(tmp_path, dataset):
    again = _make(tmp_path / 'again')
    other = _make(tmp_path / 'other', seed=1)
    for split in ('training', 'validation'):
        key = f'{split}_ann_dir'
        first = sorted(Path(dataset[key]).iterdir())
        second = sorted(Path(again[key]).iterdir())
        assert [p.read_bytes() for p in first] == \
            [p.read_bytes() for p in second]
    differs = [
        a.read_bytes() != b.read_bytes() for a, b in zip(
            sorted(Path(dataset['training_ann_dir']).iterdir()),
            sorted(Path(other['training_ann_dir']).iterdir()))
    ]
    assert all(differs)


def test_class_names_match_mmseg():
    from mmseg.datasets import ADE20KDataset
    ade = ADE20KDataset.METAINFO['classes']
    assert CLASS_NAMES == tuple(ade[cid - 1] for cid in CLASS_IDS)


def test_mmseg_ade20k_dataset_loads_it(dataset):
    from mmengine.registry import DefaultScope
    from mmseg.datasets import ADE20KDataset

    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations'),
        dict(type='PackSegInputs'),
    ]
    with DefaultScope.overwrite_default_scope('mmseg'):
        ds = ADE20KDataset(
            data_root=dataset['root'],
            data_prefix=dict(
                img_path='images/training',
                seg_map_path='annotations/training'),
            pipeline=pipeline)
    assert ds.reduce_zero_label
    assert len(ds) == 4
    seen = set()
    for i in range(len(ds)):
        sample = ds[i]
        assert tuple(sample['inputs'].shape) == (3, *SIZE)
        values = set(sample['data_samples'].gt_sem_seg.data.unique().tolist())
        assert values <= {*TRAIN_LABELS, 255}
        seen |= values
    assert 255 in seen
    assert len(seen & set(TRAIN_LABELS)) >= 6


def test_thin_structures_exist(labels):
    """Poles are at most 3 px wide: no 4x4 square fits in them.

    Only where poles cross or touch can a thicker blob form.
    """
    kernel = np.ones((4, 4), np.uint8)
    total = kept = 0
    for label in labels:
        pole = (label == POLE).astype(np.uint8)
        total += int(pole.sum())
        kept += int(cv2.morphologyEx(pole, cv2.MORPH_OPEN, kernel).sum())
    assert total > 0
    assert kept <= 0.15 * total


def test_small_objects_exist(labels):
    areas = []
    for label in labels:
        n, _, stats, _ = cv2.connectedComponentsWithStats(
            (label == BALL).astype(np.uint8), connectivity=8)
        areas += stats[1:, cv2.CC_STAT_AREA].tolist()
    assert areas
    assert np.median(areas) <= 30
    assert min(areas) <= 13


def test_non_square_size(tmp_path):
    info = _make(tmp_path / 'ade', num_train=1, num_val=1, size=(24, 40))
    img = cv2.imread(str(Path(info['validation_img_dir']) /
                         'ADE_val_00000001.jpg'))
    assert img.shape == (24, 40, 3)


def test_refuses_to_overwrite(tmp_path):
    root = tmp_path / 'ade'
    root.mkdir()
    (root / 'keep.txt').write_text('precious')
    with pytest.raises(FileExistsError, match='overwrite=True') as err:
        _make(root)
    assert str(root) in str(err.value)
    assert (root / 'keep.txt').exists()


def test_overwrite_replaces_only_a_data_set_it_wrote(tmp_path):
    """--overwrite replaces a data set this module wrote (its manifest is
    the marker); a folder without the marker is never deleted."""
    root = tmp_path / 'ade'
    _make(root)
    assert _make(root, seed=7, overwrite=True)['seed'] == 7
    assert json.loads((root / MANIFEST_NAME).read_text())['seed'] == 7
    assert [p.name for p in tmp_path.iterdir()] == ['ade']  # no temp left

    other = tmp_path / 'other'
    other.mkdir()
    (other / 'keep.txt').write_text('precious')
    with pytest.raises(FileExistsError, match='not a data set written by '
                       'make_synthetic_ade.*choose a new or empty ROOT'):
        _make(other, overwrite=True)
    assert (other / 'keep.txt').read_text() == 'precious'


@pytest.mark.parametrize('stray,named', [
    ('notes.txt', 'notes.txt'), ('images/training/x.jpg', None),
    ('annotations/validation/mine.png', None), ('.git/HEAD', '.git')])
def test_a_data_set_holding_anything_else_is_not_overwritten(tmp_path,
                                                              stray, named):
    root = tmp_path / 'ade'
    _make(root)
    path = root / stray
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('mine')
    before = sorted(str(p.relative_to(root)) for p in root.rglob('*'))
    with pytest.raises(FileExistsError, match=f'also holds '
                       f'{root / (named or stray)}, which.*move that out or '
                       'choose a new or empty ROOT'):
        _make(root, seed=5, overwrite=True)
    assert sorted(str(p.relative_to(root)) for p in root.rglob('*')) == \
        before
    assert path.read_text() == 'mine'
    assert [p.name for p in tmp_path.iterdir()] == ['ade']  # no temp left


def test_changed_parameters_need_overwrite(tmp_path):
    root = tmp_path / 'ade'
    _make(root)
    with pytest.raises(FileExistsError):
        _make(root, seed=5)
    assert _make(root, seed=5, overwrite=True)['seed'] == 5


def test_empty_root_is_filled(tmp_path):
    root = tmp_path / 'ade'
    root.mkdir()
    assert not _make(root)['reused']


def test_reuse_via_manifest(tmp_path):
    root = tmp_path / 'ade'
    _make(root)
    ann = root / 'annotations/training/ADE_train_00000001.png'
    stamp = ann.stat().st_mtime_ns
    info = _make(root)
    assert info['reused']
    assert ann.stat().st_mtime_ns == stamp


def test_incomplete_dataset_is_not_reused(tmp_path):
    root = tmp_path / 'ade'
    _make(root)
    (root / 'annotations/training/ADE_train_00000001.png').unlink()
    with pytest.raises(FileExistsError):
        _make(root)


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        _make(tmp_path / 'a', size=(8, 8))
    with pytest.raises(ValueError):
        _make(tmp_path / 'b', num_train=-1)


def _load_cli():
    return importlib.import_module('mmseg_pm.cli.make_synthetic_ade')


def test_cli(tmp_path, capsys):
    cli = _load_cli()
    root = tmp_path / 'ade'
    args = [str(root), '--num-train', '2', '--num-val', '1', '--size', '20',
            '36', '--seed', '3']
    info = cli.main(args)
    assert info['size'] == [20, 36] and info['seed'] == 3
    assert len(list((root / 'images/training').iterdir())) == 2
    assert 'wrote' in capsys.readouterr().out
    assert cli.main(args)['reused']
    with pytest.raises(SystemExit, match='--overwrite'):
        cli.main(args[:1] + ['--seed', '4'])


def test_cli_overwrite_never_deletes_a_repository(tmp_path, capsys,
                                                   monkeypatch):
    """``make_synthetic_ade.py . --overwrite`` run in a repository: the
    repository (.git, an uncommitted file) survives, one line names the
    fix, nothing is written."""
    repo = tmp_path / 'repo'
    (repo / '.git' / 'objects').mkdir(parents=True)
    (repo / '.git' / 'HEAD').write_text('ref: refs/heads/main\n')
    (repo / 'uncommitted.py').write_text('print(1)\n')
    before = {p: p.read_bytes() for p in repo.rglob('*') if p.is_file()}
    monkeypatch.chdir(repo)
    with pytest.raises(SystemExit) as err:
        _load_cli().main(['.', '--num-train', '1', '--num-val', '1',
                          '--size', '16', '16', '--overwrite'])
    message = str(err.value.code)
    assert message.count('\n') == 0 and 'choose a new or empty ROOT' in \
        message
    assert {p: p.read_bytes() for p in repo.rglob('*') if p.is_file()} == \
        before
    assert sorted(p.name for p in repo.iterdir()) == ['.git',
                                                      'uncommitted.py']
    assert [p.name for p in tmp_path.iterdir()] == ['repo']


def test_removal_takes_only_what_it_wrote(tmp_path):
    """The old data set is deleted file by file: a file that appears after
    the check (here: put there just before) stays, with its folders."""
    from mmseg_pm.datasets.synthetic_ade import _remove_written
    root = tmp_path / 'ade'
    _make(root)
    late = root / 'annotations' / 'training' / 'late.txt'
    late.write_text('mine')
    _remove_written(root)
    assert [p for p in tmp_path.rglob('*') if p.is_file()] == [late]
    assert late.read_text() == 'mine'
    assert sorted(p.name for p in root.iterdir()) == ['annotations']
