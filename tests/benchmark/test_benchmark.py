"""tools/benchmark.py on the tiny synthetic Segmenter: every file, every
row (peers at matched GFLOPs, onnxruntime, torch.compile) and numbers that
make sense (not the speed: one repeat on a shared machine says nothing
about it)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmseg_pm.benchmark import ModelSpec, calibrate_peers, \
    parse_config_arg
from mmseg_pm.benchmark.tables import render_markdown
from mmseg_pm.cli.benchmark import main
from mmseg_pm.apis.knobs import compression_for

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / 'configs/synthetic/pm-segmenter_vit-tiny_mask_synthetic-'
           'ade-64x64.py')


def test_config_argument_takes_an_optional_checkpoint():
    assert parse_config_arg('a/b.py') == ('a/b.py', None)
    assert parse_config_arg('mmseg::a/b.py:w/c.pth') == ('mmseg::a/b.py',
                                                         'w/c.pth')


@pytest.fixture(scope='module')
def results(tmp_path_factory):
    """Every default row at keep 0.5 and at 0.05 (below what ToMe and MSTM
    reach on 4 blocks of 64 tokens), exported rows, the input-size study."""
    out = tmp_path_factory.mktemp('bench')
    res = main([TINY, '--keep-rates', '1.0', '0.5', '0.05', '--parts',
                'backbone', '--batch-sizes', '1', '2', '--warmup', '0',
                '--repeats', '1', '--backends', 'onnx', '--onnx-variants',
                'off', 'pm', 'tome', '--profile',
                '--resolutions', '64', '96', '--out-dir', str(out),
                '--name', 'tiny'])
    return res, out


def rows_by_label(res, backend='eager'):
    return {r['label'].replace(f' [{backend}]', ''): r for r in res['rows']
            if r['backend'] == backend}


@pytest.mark.slow  # the benchmark run of the results fixture
def test_writes_json_markdown_and_png(results):
    res, out = results
    data = json.loads((out / 'tiny.json').read_text())
    assert data['machine']['threads'] >= 1 and data['machine']['torch']
    assert data['machine']['cpu'] and data['machine']['date']
    assert data['machine']['onnxruntime']
    md = (out / 'tiny.md').read_text()
    for text in ('## Summary', 'mmseg VisionTransformer', 'PM keep 0.5',
                 'ToMe at PM keep 0.5 GFLOPs', 'MSTM at PM keep 0.5 GFLOPs',
                 'img/s vs PM at the same GFLOPs', '[onnxruntime]',
                 'exports to ONNX', '## Where the time goes',
                 '## Ops per forward'):
        assert text in md
    assert (out / 'tiny.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert not list(out.glob('.*'))  # no temporary files left


@pytest.mark.slow  # the benchmark run of the results fixture
def test_rows_side_by_side_with_sane_numbers(results):
    res, _ = results
    rows = rows_by_label(res)
    assert set(rows) == {
        'mmseg VisionTransformer', 'PM, compression off', 'PM keep 0.5',
        "PM keep 0.5, authors' pinv", 'ToMe at PM keep 0.5 GFLOPs',
        'MSTM at PM keep 0.5 GFLOPs', 'PM keep 0.05',
        "PM keep 0.05, authors' pinv",
        'ToMe at PM keep 0.05 GFLOPs: cannot reach',
        'MSTM at PM keep 0.05 GFLOPs: cannot reach',
        # on 8x8 tokens and 4 blocks Hourglass's settings step too coarsely
        # for both (PM's assignment counts only the pairs it compares)
        'Hourglass at PM keep 0.5 GFLOPs: cannot reach',
        'Hourglass at PM keep 0.05 GFLOPs: cannot reach'}
    dense, off = rows['mmseg VisionTransformer'], rows['PM, compression off']
    pm, pinv = rows['PM keep 0.5'], rows["PM keep 0.5, authors' pinv"]
    assert (pm['reconstruct'], pinv['reconstruct']) == ('residual', 'pinv')
    assert dense['params'] == off['params']  # same model, same weights
    assert off['gflops'] == pytest.approx(dense['gflops'], rel=1e-6)
    # the same blocks; pinv's per-image sums of squared weights add a few
    # hundred FLOPs (one scalar per token)
    assert pinv['gflops'] == pytest.approx(pm['gflops'], rel=1e-4)
    assert pm['vs_mmseg']['flops_ratio'] < 0.8
    # blocks 1..3 run on the class token + a 6x6 lattice of the 8x8 tokens
    assert pm['tokens_per_layer'] == [65, 37, 37, 37]
    for row in (dense, off, pm, pinv):
        assert abs(row['backbone_flops_deviation_pct']) < 2
    for row in rows.values():
        if row['unreachable']:
            continue
        for batch in (1, 2):
            t = row['timing'][batch]
            assert t['latency_ms'] > 0 and math.isfinite(t['images_per_s'])
        assert row['memory']['inference'] > 0
        assert row['memory']['train'] > row['memory']['inference']
        assert row['profile'][1][0]['share'] > 0
    eff = pm['vs_off']['efficiency'][1]
    assert eff == pytest.approx(pm['vs_off']['speedup'][1] *
                                pm['vs_off']['flops_ratio'])
    assert {c['check'] for c in res['checks']} >= {
        'efficiency vs mmseg (eager)', 'efficiency vs off (eager)',
        'efficiency vs off (onnxruntime)', 'PM / ToMe images/s (same GFLOPs)',
        'PM / MSTM images/s (same GFLOPs)', 'PM residual / pinv images/s',
        'compression off / mmseg images/s',
        'peak memory train: off / compressed'}


@pytest.mark.slow  # the benchmark run of the results fixture
def test_peers_are_calibrated_to_the_pm_gflops(results):
    """Within 2 % of the PM row's counted GFLOPs, and the 'vs PM' column is
    their images/s over PM's."""
    res, _ = results
    rows = rows_by_label(res)
    pm = rows['PM keep 0.5']
    for name in ('ToMe', 'MSTM'):
        peer = rows[f'{name} at PM keep 0.5 GFLOPs']
        assert peer['unreachable'] is None
        assert peer['gflops'] == pytest.approx(pm['gflops'], rel=0.02)
        assert peer['match']['target_gflops'] == pytest.approx(pm['gflops'])
        assert abs(peer['match']['deviation_pct']) <= 2
        # merges per image: fewer tokens after the first compressed block
        assert min(peer['tokens_per_layer']) < 65
        for batch in (1, 2):
            assert peer['vs_pm']['speedup'][batch] == pytest.approx(
                peer['timing'][batch]['images_per_s'] /
                pm['timing'][batch]['images_per_s'])
    tome = rows['ToMe at PM keep 0.5 GFLOPs']
    assert tome['compression']['method'] == 'tome'
    assert tome['match']['setting'].startswith('r=')


@pytest.mark.slow  # the benchmark run of the results fixture
def test_a_peer_that_cannot_reach_the_target_is_a_row_saying_so(results):
    """At keep 0.05 PM runs blocks 1-3 on 4 centres; ToMe merges at most
    half of a block's tokens and MSTM keeps at least one per block: neither
    gets within 2 %. Their rows stay, untimed, with the nearest GFLOPs."""
    res, out = results
    rows = rows_by_label(res)
    pm = rows['PM keep 0.05']
    for name in ('ToMe', 'MSTM'):
        row = rows[f'{name} at PM keep 0.05 GFLOPs: cannot reach']
        assert 'outside what this method reaches' in row['unreachable']
        assert row['timing'] == {} and row['memory'] is None
        assert row['gflops'] > 1.02 * pm['gflops']  # the nearest it gets
        assert row['vs_pm']['flops_ratio'] > 1.02  # the table's miss
        assert row['vs_pm']['speedup'] == {}
        assert any(n.startswith(f'{name} at PM keep 0.05 GFLOPs')
                   for n in res['notes'])
    md = (out / 'tiny.md').read_text()
    assert 'ToMe at PM keep 0.05 GFLOPs: cannot reach' in md


@pytest.mark.slow  # the benchmark run of the results fixture
def test_onnxruntime_rows_match_pytorch(results):
    """Compression off and PM export and run under onnxruntime with parity;
    the input-dependent peers are tried and say why they do not export."""
    res, _ = results
    exported = rows_by_label(res, 'onnxruntime')
    assert set(exported) == {'PM, compression off', 'PM keep 0.5',
                             'PM keep 0.05'}
    for row in exported.values():
        assert row['onnx']['max_abs_diff'] <= 1e-4
        assert row['timing'][2]['images_per_s'] > 0
        assert row['vs_off']['flops_ratio'] == pytest.approx(
            row['gflops'] / exported['PM, compression off']['gflops'])
        assert row['vs_eager']['speedup'][1] > 0
    eager = rows_by_label(res)
    assert 'onnx' not in eager['MSTM at PM keep 0.5 GFLOPs']  # not asked
    onnx = eager['ToMe at PM keep 0.5 GFLOPs']['onnx']
    if onnx['exported']:  # a future exporter may learn its sort
        assert onnx['max_abs_diff'] <= 1e-4
    else:
        assert onnx['error'] and onnx['reason']
        assert 'tome (backbone) does not export to ONNX' in \
            ' '.join(res['notes'])


@pytest.mark.slow  # the benchmark run of the results fixture
def test_input_size_study_grows_with_the_grid(results):
    res, _ = results
    scale = {(r['img_size'][0], r['variant']): r for r in res['scale']}
    assert set(scale) == {(64, 'off'), (64, 'pm'), (96, 'off'), (96, 'pm')}
    assert scale[96, 'off']['gflops'] > 2 * scale[64, 'off']['gflops']
    assert scale[96, 'pm']['gflops'] < scale[96, 'off']['gflops']
    assert scale[96, 'pm']['tokens_per_layer'][-1] < 145


@pytest.mark.slow  # a cold Inductor compile
@pytest.mark.slow  # the benchmark run of the results fixture
def test_every_eager_row_counts_its_ops(results):
    """Aten ops, kernel launches and host syncs of one batch-1 forward; the
    default's unit launches at most 15 kernels over compression off (the
    lean unit: docs/benchmark.md) and reads nothing on the host."""
    res, _ = results
    rows = rows_by_label(res)
    off, pm = rows['PM, compression off']['ops'], rows['PM keep 0.5']['ops']
    assert off['units'] == 0 and off['launches'] < off['ops']
    assert pm['units'] >= 1 and pm['syncs'] == 0
    assert 0 < (pm['launches'] - off['launches']) / pm['units'] <= 15
    assert all(r.get('ops') is None for r in res['rows']
               if r['backend'] != 'eager')


def test_cuda_graph_rows_are_for_cuda_devices(tmp_path):
    res = main([TINY, '--variants', 'off', 'pm', '--keep-rates', '0.5',
                '--parts', 'backbone', '--batch-sizes', '1', '--warmup',
                '0', '--repeats', '1', '--backends', 'cudagraph',
                '--memory', 'none', '--no-plot', '--out-dir', str(tmp_path)])
    assert {r['backend'] for r in res['rows']} == {'eager'}
    assert any('CUDA only, none on cpu' in n for n in res['notes'])


def test_compiled_rows_compile_once_per_shape(tmp_path):
    """torch.compile of PM: one graph for the batch shape, none more for
    new data of that shape; compile time apart. (Only the PM row is
    compiled, to keep the test short: compression off compiles the same
    way, a cold Inductor compile costs ~10 s on 2 cores.)"""
    if not hasattr(torch, 'compile'):
        pytest.skip('torch.compile is unavailable')
    res = main([TINY, '--variants', 'off', 'pm', '--keep-rates', '0.5',
                '--parts', 'backbone', '--batch-sizes', '1', '--warmup',
                '0', '--repeats', '2', '--backends', 'compile',
                '--compile-variants', 'pm', '--memory', 'none', '--no-plot',
                '--out-dir', str(tmp_path)])
    compiled = rows_by_label(res, 'torch.compile')
    assert set(compiled) == {'PM keep 0.5'}
    row = compiled['PM keep 0.5']
    info = row['compile'][1]
    assert info['graphs'] >= 1 and info['recompiles_same_shape'] == 0
    assert info['first_call_s'] > row['timing'][1]['latency_ms'] / 1e3
    assert row['timing'][1]['repeats'] == 2
    assert row['vs_eager']['speedup'][1] > 0
    assert row['gflops'] == rows_by_label(res)['PM keep 0.5']['gflops']
    assert any(c['check'].startswith('graphs compiled on new data') and
               c['ok'] for c in res['checks'])
    md = render_markdown(res)
    assert '[torch.compile]' in md and 'Exported and compiled rows' in md


def test_calibration_takes_the_nearest_knob_or_reports_unreachable():
    """calibrate_peers on a FLOPs model of token counts: a reachable target
    within the tolerance, one below ToMe's half-per-block cap flagged."""
    def flops_of(compression):  # tokens through 4 blocks of 64 + 1
        tokens, total = 65, 0
        for r in compression['r']:
            total += tokens
            tokens -= min(r, (tokens - 1) // 2)
        return 1000 * total

    spec = ModelSpec(TINY, 'tome', keep_rate=0.5)
    near, far = calibrate_peers([spec, ModelSpec(TINY, 'tome',
                                                 keep_rate=0.1)],
                                {0.5: 200_000, 0.1: 100_000}, flops_of,
                                num_tokens=64, num_layers=4)
    assert near.unreachable is None
    assert abs(near.match['deviation_pct']) <= 2
    assert flops_of(near.compression) == pytest.approx(200_000, rel=0.02)
    assert near.compression == compression_for('tome', near.match['knob'],
                                               4, 64)
    assert 'outside what this method reaches' in far.unreachable
    assert far.label == 'ToMe at PM keep 0.1 GFLOPs: cannot reach'
    with pytest.raises(ValueError, match='no PM row at keep rate 0.3'):
        calibrate_peers([ModelSpec(TINY, 'mstm', keep_rate=0.3)], {},
                        flops_of, 64, 4)


def test_peers_without_pm_rows_are_refused_clearly(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main([TINY, '--variants', 'off', 'tome', '--out-dir', str(tmp_path)])
    assert err.value.code == 2
    assert "matched to the GFLOPs of the 'pm' rows: add pm" in \
        capsys.readouterr().err


@pytest.mark.slow  # tools/benchmark.py in a subprocess
def test_command_line_refuses_a_missing_gpu_clearly(tmp_path):
    if torch.cuda.is_available():
        pytest.skip('a GPU is present')
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tools/benchmark.py'), TINY, '--device',
         'cuda', '--out-dir', str(tmp_path)], capture_output=True, text=True,
        cwd=ROOT)
    assert proc.returncode == 2
    assert 'no CUDA device here; use --device cpu' in proc.stderr


def test_scaling_rows_compare_dense_pm_and_peers_per_model(tmp_path):
    """--scaling alone: per model mmseg's dense row, this project's with
    compression off, PM keep 0.7 and the peers at its GFLOPs, batch 1,
    eager, whole segmentor, with the efficiency against both dense rows; a
    model over --scaling-large-gflops gets its own repeat count and no
    peers."""
    dense_tiny = str(ROOT / 'configs/synthetic/segmenter_vit-tiny_mask_'
                     'synthetic-ade-64x64.py')
    res = main(['--scaling', '--scaling-configs', dense_tiny,
                '--scaling-peers', 'tome', '--repeats', '2', '--warmup',
                '0', '--out-dir', str(tmp_path), '--name', 'scaling'])
    rows = {r['label']: r for r in res['scaling']}
    assert set(rows) == {'mmseg VisionTransformer', 'PM, compression off',
                         'PM keep 0.7', 'ToMe at PM keep 0.7 GFLOPs'}
    assert res['rows'] == [] and not (tmp_path / 'scaling.png').exists()
    pm, tome = rows['PM keep 0.7'], rows['ToMe at PM keep 0.7 GFLOPs']
    for row in rows.values():
        assert row['part'] == 'segmentor' and row['backend'] == 'eager'
        assert list(row['timing']) == [1] and row['repeats'] == 2
    assert pm['vs_mmseg']['flops_ratio'] < 1
    for ref in ('vs_mmseg', 'vs_off'):
        assert pm[ref]['efficiency'][1] == pytest.approx(
            pm[ref]['speedup'][1] * pm[ref]['flops_ratio'])
    assert tome['vs_pm']['flops_ratio'] == pytest.approx(1, abs=0.02)
    md = (tmp_path / 'scaling.md').read_text()
    assert '## Scaling with the model' in md and 'efficiency vs mmseg' in md
    assert 'efficiency vs off' in md
    large = main(['--scaling', '--scaling-configs', dense_tiny,
                  '--scaling-large-gflops', '0.001',
                  '--scaling-large-repeats', '1', '--repeats', '2',
                  '--warmup', '0', '--out-dir', str(tmp_path), '--name',
                  'large'])
    assert {(r['label'], r['repeats']) for r in large['scaling']} == {
        ('mmseg VisionTransformer', 1), ('PM, compression off', 1),
        ('PM keep 0.7', 1)}
    assert any('1 timed calls per row, no peers' in n
               for n in large['notes'])


def test_scene_images_are_distinct_per_batch_element_and_repeatable():
    from mmseg_pm.benchmark.measure import scene_images

    x = scene_images(4, (32, 48))
    assert x.shape == (4, 3, 32, 48)
    assert torch.equal(x, scene_images(4, (32, 48)))
    assert torch.equal(x[:2], scene_images(2, (32, 48)))
    for a in range(4):
        for b in range(a + 1, 4):
            assert (x[a] - x[b]).abs().mean() > 0.1
    assert -1 < float(x.mean()) < 1 and 0.3 < float(x.std()) < 2


def test_benchmark_runs_from_python_with_keyword_settings(tmp_path):
    """The library entry point: typed settings by keyword, no Namespace,
    no files written (writing is the command line's)."""
    from mmseg_pm.utils.errors import UsageError
    from mmseg_pm.benchmark.pipeline import run
    res = run(configs=[TINY], variants=['off', 'pm'], keep_rates=[0.5],
              parts=['backbone'], batch_sizes=[1], warmup=0, repeats=1,
              backends=[], memory='none', onnx_dir=str(tmp_path))
    assert [r['variant'] for r in res['rows']] == ['off', 'pm']
    off, pm = res['rows']
    assert pm['gflops'] < off['gflops']
    assert res['settings']['keep_rates'] == [0.5]
    assert not any(tmp_path.iterdir())
    with pytest.raises(UsageError, match='add pm to --variants'):
        run(configs=[TINY], variants=['tome'])


def test_command_line_defaults_are_the_settings_defaults():
    """One place for each default: the parser reads the dataclass."""
    from mmseg_pm.benchmark.settings import BenchmarkSettings
    from mmseg_pm.cli import benchmark as cli, settings_from
    parsed = settings_from(BenchmarkSettings, cli.build_parser().parse_args(
        [TINY]))
    assert parsed == BenchmarkSettings(configs=(TINY, ))
