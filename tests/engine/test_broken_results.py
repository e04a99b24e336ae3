"""Issue 18's cases that left a wrong or broken result behind, through the
real command lines: bad data is refused before any work, naming the file;
a fault while the Runner or a tool writes (a full disk, SIGTERM, Ctrl-C,
faked at the write by tests/engine/fault_injection.py in a subprocess)
leaves no partial file; only rank 0 writes the test metrics; token scores
in the documented format are drawn and non-finite ones refused."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmseg_pm.utils.checkpoint import load_checkpoint_file
from mmseg_pm.utils.outputs import stale_temp_files
from tests.helpers import ROOT, cli_module as tool
from tests.helpers import refused, shrunk_world, snapshot

FAULTS = Path(__file__).with_name('fault_injection.py')
# how each fault ends a tool: status and the one line it prints
ENDINGS = dict(enospc=(1, 'No space left on device'),
               sigterm=(143, 'terminated (SIGTERM)'),
               sigint=(130, 'interrupted'))


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    return shrunk_world(tmp_path_factory.mktemp('broken_results'))


def leftovers(folder: Path) -> list:
    """Temporary files of the output rule (or of anything) left behind."""
    return sorted(p.name for p in folder.rglob('*') if '.tmp' in p.name
                  or p.name.startswith('.'))


def run_faulty(fault: str, pattern: str, tool_name: str, *args, cwd):
    """tools/TOOL.py ARGS in a subprocess, ``fault`` at the first write of
    a file matching ``pattern``; returns the completed process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, FAULTS, fault, pattern, tool_name, *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def assert_ended(proc, fault: str) -> None:
    status, line = ENDINGS[fault]
    assert proc.returncode == status, proc.stderr[-3000:]
    assert line in proc.stderr and 'Traceback' not in proc.stderr, \
        proc.stderr[-3000:]


# ------------------------------------------------- 1. rank-0 test metrics
def test_the_test_metrics_json_is_written_by_rank_0_alone(
        world, tmp_path, monkeypatch):
    """Rank 0 writes the metrics JSON (valid, atomically); another rank
    logs the same metrics and writes none (mmengine's LoggerHook wrote it
    from every rank into one path: a corrupt JSON, 1 run in 10)."""
    import mmseg_pm.engine.hooks as hooks

    argv = [world['dense_cfg'], world['dense']]
    metrics = tool('test').main(list(map(str, argv + [
        '--work-dir', tmp_path / 'rank0'])))
    (written, ) = (tmp_path / 'rank0').glob('*/*.json')
    assert json.loads(written.read_text())['mIoU'] == metrics['mIoU']
    monkeypatch.setattr(hooks, 'is_main_process', lambda: False)
    other = tool('test').main(list(map(str, argv + [
        '--work-dir', tmp_path / 'rank1'])))
    assert other == metrics
    assert list((tmp_path / 'rank1').glob('*/*.json')) == []


def test_every_config_writes_through_the_project_writers():
    """Configs on mmseg's bases get the project's hooks and metric from
    load_config; the project's own configs name them."""
    from mmseg_pm.apis.config import load_config

    for config in ('segmenter/pm-segmenter_vit-s_mask_8xb1-160k_ade20k-'
                   '512x512.py', 'synthetic/tome-segmenter_vit-tiny_mask_'
                   'synthetic-ade-64x64.py'):
        cfg = load_config(str(ROOT / 'configs' / config), None)
        assert cfg.default_hooks.checkpoint.type == 'AtomicCheckpointHook'
        assert cfg.default_hooks.logger.type == 'RankZeroLoggerHook'
        assert cfg.test_evaluator.type == 'AtomicIoUMetric'
    text = (ROOT / 'configs/synthetic/segmenter_vit-tiny_mask_synthetic-'
            'ade-64x64.py').read_text()
    for name in ('AtomicCheckpointHook', 'RankZeroLoggerHook',
                 'AtomicIoUMetric'):
        assert f"type='{name}'" in text


# ------------------------------------------------------------ 2. bad data
def corrupt(root: Path, split: str, how: str) -> Path:
    """Damage the first pair of ``split``; returns the file named."""
    image = sorted((root / 'images' / split).glob('*.jpg'))[0]
    annotation = root / 'annotations' / split / f'{image.stem}.png'
    if how == 'labels out of range':  # 200 with 150 classes
        labels = np.array(Image.open(annotation))
        Image.fromarray(np.full_like(labels, 200)).save(annotation)
        return annotation
    if how == 'other size':
        Image.open(annotation).resize((32, 48)).save(annotation)
        return annotation
    if how == 'damaged image':
        image.write_bytes(image.read_bytes()[:64])
        return image
    for png in annotation.parent.iterdir():  # an empty annotation folder
        png.unlink()
    return image


CORRUPTIONS = {'labels out of range': 'holds the label 200',
               'other size': 'is 48x32 but its image',
               'damaged image': 'cannot be decoded',
               'empty annotation folder': 'has no annotation'}


@pytest.mark.parametrize('tool_name,split,how', [
    ('test', 'validation', 'labels out of range'),
    ('test', 'validation', 'other size'),
    ('test', 'validation', 'damaged image'),
    ('test', 'validation', 'empty annotation folder'),
    ('train', 'training', 'labels out of range'),
    ('train', 'validation', 'other size'),
    ('prune', 'training', 'labels out of range'),
    ('prune', 'training', 'damaged image'),
])
def test_bad_data_is_named_before_any_work(world, tmp_path, capsys,
                                           tool_name, split, how):
    """Each refused with the first bad file and the fix, before a model is
    built: no checkpoint, metrics or log of a run is left, the data is
    untouched."""
    root = tmp_path / 'data'
    shutil.copytree(world['root'], root)
    bad = corrupt(root, split, how)
    before = snapshot(root)
    work = tmp_path / 'work'
    data = [f'{s}_dataloader.dataset.data_root={root}'
            for s in ('train', 'val', 'test')]
    argv = {'test': [world['dense_cfg'], world['dense'], '--work-dir', work],
            'train': [world['dense_cfg'], '--work-dir', work],
            'prune': [world['pm_cfg'], world['dense'], '--out',
                      work / 'pruned.pth', '--iters', '1']}[tool_name]
    err = refused(tool(tool_name), argv + ['--cfg-options', *data], capsys)
    assert str(bad) in err and CORRUPTIONS[how] in err, err
    assert 'Traceback' not in err
    assert snapshot(root) == before
    assert not work.exists() or not any(work.rglob('*.*'))


# ------------------------------------- 3. checkpoints written by the Runner
@pytest.mark.slow  # a 2-iteration training in a subprocess
@pytest.mark.parametrize('fault', ['enospc', 'sigterm', 'sigint'])
def test_a_failed_checkpoint_write_leaves_the_last_good_one(world, tmp_path,
                                                            fault):
    """The save of iter_2.pth fails halfway: iter_1.pth stays whole and
    named by last_checkpoint; no iter_2.pth, no temporary file."""
    work = tmp_path / 'work'
    proc = run_faulty(
        fault, r'iter_2\.pth', 'train', world['dense_cfg'], '--work-dir',
        work, '--cfg-options', 'default_hooks.checkpoint.interval=1',
        'val_cfg=None', 'val_dataloader=None', 'val_evaluator=None',
        cwd=tmp_path)
    assert_ended(proc, fault)
    assert sorted(p.name for p in work.glob('*.pth')) == ['iter_1.pth']
    assert (work / 'last_checkpoint').read_text() == str(work / 'iter_1.pth')
    assert load_checkpoint_file(work / 'iter_1.pth')['meta']['iter'] == 1
    assert leftovers(work) == []


@pytest.mark.slow  # a 1-iteration training in a subprocess
def test_a_failed_last_checkpoint_write_leaves_none(world, tmp_path):
    """Ctrl-C while last_checkpoint is written: the checkpoint is whole,
    last_checkpoint absent rather than cut off."""
    work = tmp_path / 'work'
    proc = run_faulty(
        'sigint', r'last_checkpoint', 'train', world['dense_cfg'],
        '--work-dir', work, '--cfg-options', 'train_cfg.max_iters=1',
        'default_hooks.checkpoint.interval=1', 'val_cfg=None',
        'val_dataloader=None', 'val_evaluator=None', cwd=tmp_path)
    assert_ended(proc, 'sigint')
    assert not (work / 'last_checkpoint').exists()
    assert load_checkpoint_file(work / 'iter_1.pth')['meta']['iter'] == 1
    assert leftovers(work) == []


# --------------------------------------------- 4. prediction files
@pytest.mark.slow  # tools/test.py in a subprocess
def test_a_full_disk_leaves_no_prediction_file(world, tmp_path):
    out = tmp_path / 'preds'
    proc = run_faulty('enospc', r'ADE_val_\d+\.png', 'test',
                      world['dense_cfg'], world['dense'], '--out', out,
                      '--work-dir', tmp_path / 'work', cwd=tmp_path)
    assert_ended(proc, 'enospc')
    assert list(out.glob('*.png')) == [] and leftovers(out) == []


def test_predictions_are_written_whole(world, tmp_path):
    out = tmp_path / 'preds'
    tool('test').main(list(map(str, [
        world['dense_cfg'], world['dense'], '--out', out, '--work-dir',
        tmp_path / 'work'])))
    (png, ) = out.iterdir()
    labels = np.array(Image.open(png))
    assert png.name == 'ADE_val_00000001.png' and labels.shape == (64, 64)
    assert labels.min() >= 1  # ADE20K: labels + 1 (reduce_zero_label)


# -------------------------------------------- 5. SIGTERM and stale files
@pytest.mark.slow  # tools/prune.py in a subprocess
def test_sigterm_during_the_prune_save_leaves_nothing(world, tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    proc = run_faulty('sigterm', r'pruned\.pth', 'prune', world['pm_cfg'],
                      world['dense'], '--out', out / 'pruned.pth',
                      '--iters', '1', cwd=tmp_path)
    assert_ended(proc, 'sigterm')
    assert list(out.iterdir()) == []


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, '-c', 'pass'])
    child.wait()
    return child.pid


def test_the_next_write_removes_what_killed_runs_left(world, tmp_path):
    """A temporary file of the same output from a process that no longer
    runs (SIGKILL, power loss) is removed by the next successful write;
    a live writer's, another host's and another output's are kept."""
    out = tmp_path / 'pruned.pth'
    host = socket.gethostname()
    stale = tmp_path / f'.pruned.pth.{host}.{dead_pid()}.k1ll3d_x.tmp.pth'
    kept = [tmp_path / f'.pruned.pth.{host}.{os.getppid()}.l1ve_abc.tmp.pth',
            tmp_path / f'.pruned.pth.elsewhere.{dead_pid()}.rem0te_x.tmp.pth',
            tmp_path / f'.other.pth.{host}.{dead_pid()}.0ther_xy.tmp.pth']
    for path in [stale] + kept:
        path.write_bytes(b'half a checkpoint')
    assert stale_temp_files(out) == [stale]
    tool('prune').main(list(map(str, [world['pm_cfg'], world['dense'],
                                      '--out', out, '--iters', '1'])))
    assert not stale.exists() and all(p.exists() for p in kept)
    assert load_checkpoint_file(out)['meta']['prune_and_merge']


# ------------------------------------------------------- 6. token scores
def test_visualize_draws_a_scores_tensor_and_refuses_nan_scores(
        world, tmp_path, capsys):
    """--scores FILE with the (L, N) tensor --help describes is drawn; a
    dict of NaN scores is refused and draws nothing."""
    tensor = tmp_path / 'scores.pth'
    torch.save(torch.rand(2, 64), tensor)
    image = sorted((world['root'] / 'images/validation').glob('*.jpg'))[0]
    argv = [world['pm_cfg'], world['pruned'], image]
    drawn = tmp_path / 'tokens.png'
    tool('visualize_tokens').main(list(map(str, argv + [
        '--out', drawn, '--scores', tensor, '--score-iters', '0'])))
    assert f'token scores: {tensor}' in capsys.readouterr().out
    assert Image.open(drawn).size[0] > 0
    nan = tmp_path / 'nan.pth'
    torch.save(dict(scores=torch.full((2, 64), float('nan'))), nan)
    refused_png = tmp_path / 'nan.png'
    err = refused(tool('visualize_tokens'), argv + [
        '--out', refused_png, '--scores', nan], capsys)
    assert 'not finite numbers (128 NaN or Inf of 128)' in err
    assert not refused_png.exists() and leftovers(tmp_path) == []
    wrong = tmp_path / 'wrong.pth'
    torch.save(torch.rand(3, 64), wrong)
    err = refused(tool('visualize_tokens'), argv + [
        '--out', refused_png, '--scores', wrong], capsys)
    assert 'shape (3, 64); this model needs (2, 64)' in err
