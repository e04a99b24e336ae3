"""tools/benchmark.py on the tiny synthetic Segmenter: every file, every
row, and numbers that make sense (not the speed: one repeat on a shared
machine says nothing about it)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from mmseg_pm.benchmark import main, parse_config_arg

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / 'configs/synthetic/pm-segmenter_vit-tiny_mask_synthetic-'
           'ade-64x64.py')


def test_config_argument_takes_an_optional_checkpoint():
    assert parse_config_arg('a/b.py') == ('a/b.py', None)
    assert parse_config_arg('mmseg::a/b.py:w/c.pth') == ('mmseg::a/b.py',
                                                         'w/c.pth')


@pytest.fixture(scope='module')
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp('bench')
    res = main([TINY, '--keep-rates', '1.0', '0.5', '--parts', 'backbone',
                '--batch-sizes', '1', '2', '--warmup', '0', '--repeats', '1',
                '--resolutions', '64', '96', '--out-dir', str(out),
                '--name', 'tiny'])
    return res, out


@pytest.mark.slow  # the benchmark run of the results fixture
def test_writes_json_markdown_and_png(results):
    res, out = results
    data = json.loads((out / 'tiny.json').read_text())
    assert data['machine']['threads'] >= 1 and data['machine']['torch']
    assert data['machine']['cpu'] and data['machine']['date']
    md = (out / 'tiny.md').read_text()
    assert 'mmseg VisionTransformer' in md and 'PM sparse keep 0.5' in md
    assert (out / 'tiny.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert not list(out.glob('.*'))  # no temporary files left


@pytest.mark.slow  # the benchmark run of the results fixture
def test_rows_side_by_side_with_sane_numbers(results):
    res, _ = results
    rows = {r['label']: r for r in res['rows']}
    assert set(rows) == {'mmseg VisionTransformer', 'PM, compression off',
                         'PM sparse keep 0.5', 'PM dense keep 0.5'}
    dense, off = rows['mmseg VisionTransformer'], rows['PM, compression off']
    sparse, matrix = rows['PM sparse keep 0.5'], rows['PM dense keep 0.5']
    assert dense['params'] == off['params']  # same model, same weights
    assert off['gflops'] == pytest.approx(dense['gflops'], rel=1e-6)
    assert sparse['gflops'] < matrix['gflops'] < dense['gflops']
    assert sparse['vs_mmseg']['flops_ratio'] < 0.8
    # blocks 1..3 run on the class token + a 6x6 lattice of the 8x8 tokens
    assert sparse['tokens_per_layer'] == [65, 37, 37, 37]
    for row in rows.values():
        assert abs(row['backbone_flops_deviation_pct']) < 2
        for batch in (1, 2):
            t = row['timing'][batch]
            assert t['latency_ms'] > 0 and math.isfinite(t['images_per_s'])
        assert row['memory']['inference'] > 0
        assert row['memory']['train'] > row['memory']['inference']
    eff = sparse['vs_mmseg']['efficiency'][1]
    assert eff == pytest.approx(sparse['vs_mmseg']['speedup'][1] *
                                sparse['vs_mmseg']['flops_ratio'])
    assert {c['check'] for c in res['checks']} >= {
        'efficiency vs mmseg', 'sparse / dense-matrix images/s',
        'compression off / mmseg images/s',
        'peak memory train: off / compressed'}


@pytest.mark.slow  # the benchmark run of the results fixture
def test_input_size_study_grows_with_the_grid(results):
    res, _ = results
    scale = {(r['img_size'][0], r['variant']): r for r in res['scale']}
    assert set(scale) == {(64, 'off'), (64, 'sparse'), (96, 'off'),
                          (96, 'sparse')}
    assert scale[96, 'off']['gflops'] > 2 * scale[64, 'off']['gflops']
    assert scale[96, 'sparse']['gflops'] < scale[96, 'off']['gflops']
    assert scale[96, 'sparse']['tokens_per_layer'][-1] < 145


@pytest.mark.slow  # tools/benchmark.py in a subprocess
def test_command_line_refuses_a_missing_gpu_clearly(tmp_path):
    if __import__('torch').cuda.is_available():
        pytest.skip('a GPU is present')
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tools/benchmark.py'), TINY, '--device',
         'cuda', '--out-dir', str(tmp_path)], capture_output=True, text=True,
        cwd=ROOT)
    assert proc.returncode == 2
    assert 'no CUDA device here; use --device cpu' in proc.stderr
