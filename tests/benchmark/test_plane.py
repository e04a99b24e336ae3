"""The speed-quality plane (tools/speed_quality.py): study variants meet
the benchmark rows of the same model, budgets meet the nearest PM row's
GFLOPs fraction, the Pareto front is the best method at each speed, and
the tool writes its table and plot and refuses a benchmark that does not
fit the study."""
import json

import pytest

from mmseg_pm.apis.knobs import METHODS
from mmseg_pm.benchmark.plane import (benchmark_variant, pareto,
                                      plane_points, verdict)
from mmseg_pm.cli.speed_quality import main


def test_study_variants_meet_the_benchmark_row_of_their_model():
    assert benchmark_variant(METHODS['res-content']) == 'pm'
    assert benchmark_variant(METHODS['res-random']) == 'pm-static'
    # the authors' pinv with static windows has no row (pm-pinv keeps the
    # default content-aware windows), lattice centres share res-random's
    assert benchmark_variant(METHODS['pm-row']) is None
    assert benchmark_variant(METHODS['res-lattice']) is None
    assert benchmark_variant(METHODS['res-content-k5']) is None
    for peer in ('tome', 'mstm', 'algm', 'hourglass', 'mpm'):
        assert benchmark_variant(METHODS[peer]) == peer


def bench_row(variant, keep, gflops, b1, b8, unreachable=None):
    return dict(variant=variant, keep_rate=keep, backend='eager',
                part='segmentor', dtype='fp32', gflops=gflops,
                unreachable=unreachable,
                vs_off=dict(speedup={'1': b1, '8': b8}))


BENCHMARK = dict(machine=dict(date='today', cpu='cpu', threads=2,
                              load_average=[0.1]), rows=[
    bench_row('off', None, 100.0, 1.0, 1.0),
    bench_row('pm', 0.6, 70.5, 1.30, 1.35),
    bench_row('pm-static', 0.6, 70.4, 1.33, 1.40),
    bench_row('tome', 0.6, 70.6, 1.28, 1.45),
    bench_row('pm', 0.3, 50.2, 1.70, 1.80),
    bench_row('tome', 0.3, 50.0, 1.60, 1.70, unreachable='cannot reach'),
    dict(bench_row('pm', 0.3, 50.2, 2.0, 2.0), backend='onnx'),
])


def study_row(method, budget, fraction, before, after):
    return dict(method=method, budget=budget, fraction=fraction,
                miou_before=before, miou_after=after)


STUDY = dict(dense=dict(miou=61.0), rows=[
    study_row('res-content', 0.7, 0.699, 60.9, 61.5),
    study_row('res-random', 0.7, 0.701, 60.5, 61.0),
    study_row('tome', 0.7, 0.70, 60.0, 60.5),
    study_row('res-content', 0.5, 0.50, 59.0, 60.0),
    study_row('tome', 0.5, 0.50, 19.0, 19.5),  # its row cannot reach
    study_row('res-content', 0.4, 0.40, 54.0, 56.0),  # no row near 40 %
    study_row('pm-row', 0.7, 0.70, 33.0, 34.0),  # no row of its model
])


def test_points_take_the_row_of_the_same_model_at_the_same_fraction():
    points = plane_points(STUDY['rows'], BENCHMARK)
    got = {(p['method'], p['budget']): p['speedup'] for p in points}
    assert got == {('res-content', 0.7): {1: 1.30, 8: 1.35},
                   ('res-random', 0.7): {1: 1.33, 8: 1.40},
                   ('tome', 0.7): {1: 1.28, 8: 1.45},
                   ('res-content', 0.5): {1: 1.70, 8: 1.80}}


def test_the_front_is_the_best_method_at_each_speed():
    points = plane_points(STUDY['rows'], BENCHMARK)
    front = pareto(points, 8, 'miou_after')
    # fastest first, each more accurate than everything faster
    assert [(p['method'], p['budget']) for p in front] == [
        ('res-content', 0.5), ('tome', 0.7), ('res-random', 0.7),
        ('res-content', 0.7)]
    front = pareto(points, 1, 'miou_before')  # ToMe: slower and worse
    assert [(p['method'], p['budget']) for p in front] == [
        ('res-content', 0.5), ('res-random', 0.7), ('res-content', 0.7)]
    text = ' '.join(verdict(points))
    assert 'Batch 1, after fine-tuning' in text and 'Batch 8' in text


def test_tool_writes_table_and_plot_and_refuses_what_does_not_fit(
        tmp_path, capsys):
    study = tmp_path / 'study.json'
    study.write_text(json.dumps(STUDY))
    bench = tmp_path / 'bench.json'
    bench.write_text(json.dumps(BENCHMARK))
    out = tmp_path / 'out'
    main(['--study', str(study), '--benchmark', str(bench), '--out-dir',
          str(out)])
    text = (out / 'speed_quality.md').read_text()
    assert '| 70 % |' in text and '**61.50**' in text
    assert (out / 'speed_quality.png').read_bytes()[:4] == b'\x89PNG'
    far = dict(BENCHMARK, rows=[dict(r, gflops=r['gflops'] * 0.2)
                                if r['variant'] != 'off' else r
                                for r in BENCHMARK['rows']])
    bench.write_text(json.dumps(far))
    with pytest.raises(SystemExit) as refused:
        main(['--study', str(study), '--benchmark', str(bench),
              '--out-dir', str(out), '--name', 'far'])
    assert refused.value.code == 2
    assert 'no study row' in capsys.readouterr().err
    assert not (out / 'far.md').exists()
