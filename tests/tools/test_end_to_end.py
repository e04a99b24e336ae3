"""tools/train.py then tools/test.py on a compressed config, through mmseg's
own ADE20K dataset, pipeline, Runner, checkpointing and IoU metric."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmseg_pm.datasets import make_synthetic_ade

ROOT = Path(__file__).resolve().parents[2]
PM_CONFIG = ROOT / 'configs/synthetic/pm-segmenter_vit-tiny_mask_synthetic-ade-64x64.py'


def run_tool(*args, cwd):
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow  # tools/train.py and tools/test.py in subprocesses
def test_train_then_test_a_compressed_segmenter(tmp_path):
    data = tmp_path / 'data'
    make_synthetic_ade(data, num_train=8, num_val=3, size=(96, 128), seed=1,
                       progress=False)
    work = tmp_path / 'work'
    options = [
        f'train_dataloader.dataset.data_root={data}',
        f'val_dataloader.dataset.data_root={data}',
        f'test_dataloader.dataset.data_root={data}',
        'train_dataloader.batch_size=2', 'train_cfg.max_iters=4',
        'train_cfg.val_interval=4', 'default_hooks.checkpoint.interval=4',
        'param_scheduler.0.end=4',
        # blocks 1..3 run on 36 lattice centres of the 8x8 grid
        'model.backbone.compression.rule=nearest',
    ]
    log = run_tool(ROOT / 'tools/train.py', PM_CONFIG, '--work-dir', work,
                   '--cfg-options', *options, cwd=tmp_path)
    assert 'Iter(train) [4/4]' in log
    checkpoint = work / 'iter_4.pth'
    assert checkpoint.is_file()

    state = torch.load(checkpoint, map_location='cpu',
                       weights_only=False)['state_dict']
    for first in ('1', '2', '3'):
        group = state[f'backbone.token_compressors.{first}.group']
        assert group.shape == (64, )
        assert int(state[f'backbone.token_compressors.{first}.is_centre'].sum()) \
            == 36  # 6x6 lattice on the 8x8 grid at keep_rate 0.5
    # the merge weights were trained on their support
    assert not torch.equal(
        state['backbone.token_compressors.1.merge_weight'], torch.ones(64))

    out = run_tool(ROOT / 'tools/test.py', PM_CONFIG, checkpoint,
                   '--work-dir', tmp_path / 'test',
                   '--cfg-options', *options[:3], cwd=tmp_path)
    assert 'mIoU' in out
    results = list((tmp_path / 'test').rglob('*.json'))
    metrics = [json.loads(p.read_text()) for p in results]
    miou = [m['mIoU'] for m in metrics if 'mIoU' in m]
    assert miou and 0.0 <= miou[0] <= 100.0
