"""The quality study's machinery: FLOPs calibration of its variants on a
tiny model, merge-window statistics, and one method end to end
(tools/study.py) with two iterations. The knobs themselves:
tests/apis/test_knobs.py."""
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from mmseg_pm.apis import build_segmentor, crop_flops
from mmseg_pm.apis.calibration import CalibrationError
from mmseg_pm.apis.knobs import METHODS, compression_for
from mmseg_pm.cli import study as study_cli
from mmseg_pm.compression import build_structure
from mmseg_pm.study import (StudySettings, empty_neighbourhoods, pipeline,
                            window_stats)
from mmseg_pm.study.windows import image_window_stats
from mmseg_pm.utils.flops import count_flops



@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as the study runs: on shared cores two threads
    contend and tiny models run many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_window_stats_measure_distance_to_the_centre():
    one_row = build_structure((1, 4), torch.tensor([0]))  # 0 <- 1, 2, 3
    assert window_stats([one_row]) == dict(mean_distance=1.5, max_window=4,
                                           empty_3x3=0.5)  # [1:4] is empty
    every = build_structure((2, 2), torch.arange(4))
    assert window_stats([every]) == dict(mean_distance=0.0, max_window=1,
                                         empty_3x3=0.0)
    corner = build_structure((6, 6), torch.tensor([0]))
    assert empty_neighbourhoods(corner) == 15 / 16  # only the (0, 0) window


def test_image_windows_are_measured_as_each_image_formed_them():
    # 1 x 4 grid, centres 0 and 3: static windows {0, 1} and {2, 3}
    s = build_structure((1, 4), torch.tensor([0, 3]), rule='nearest')
    assert s.group.tolist() == [0, 0, 1, 1]
    # sources: class token in slot 0, windows in slots 1 and 2
    static = torch.tensor([[0, 1, 1, 2, 2]])
    moved = torch.tensor([[0, 1, 2, 2, 2],    # token 1 joined centre 3
                          [0, 1, 1, 1, 2]])   # token 2 joined centre 0
    same = image_window_stats([s], [static])
    assert same == dict(window_stats([s]), moved=0.0)
    got = image_window_stats([s], [moved])
    assert got['moved'] == 2 / 8 and got['max_window'] == 3
    # distances: image 1: 0, 2, 1, 0; image 2: 0, 1, 2, 0
    assert got['mean_distance'] == 6 / 8
    with pytest.raises(ValueError, match='2 source maps for 1 structures'):
        image_window_stats([s], [static, static])


def tiny_args(tmp_path, **kw):
    args = dict(img_size=64, num_layers=4, prune_rate=0.0, tolerance=0.02,
                seed=0, data_root=str(tmp_path), batch_size=2)
    args.update(kw)
    return StudySettings(**args)


@pytest.mark.parametrize('method', ['pm-row', 'tome', 'res-spread',
                                    'res-content'])
def test_calibration_hits_the_flops_target(tmp_path, method):
    args = tiny_args(tmp_path)
    base = pipeline.study_config(args)
    dense = build_segmentor(base)
    dense_flops = crop_flops(dense)
    scores = torch.rand(4, 64, generator=torch.Generator().manual_seed(0))
    model, cfg, knob, flops = pipeline.compress(
        method, 0.8, base, dense.state_dict(), dense_flops, scores, args)
    assert abs(flops / (0.8 * dense_flops) - 1) <= 0.02
    x = torch.rand(1, 3, 64, 64)
    assert count_flops(model, x, mode='tensor') == flops
    # the dense weights were loaded: the compressed model differs from the
    # dense one only through its compression
    assert torch.equal(model.backbone.patch_embed.projection.weight,
                       dense.backbone.patch_embed.projection.weight)
    assert model(x, mode='tensor').shape == dense(x, mode='tensor').shape
    with pytest.raises(CalibrationError):
        pipeline.compress(method, 0.05, base, dense.state_dict(), dense_flops,
                       scores, args)


def test_algm_calibrates_on_its_mean_over_the_validation_images(
        synthetic_ade):
    """ALGM's FLOPs depend on the image and the weights: the calibrated
    model (dense weights loaded) hits the target with its mean over the
    validation images, each counted alone."""
    args = tiny_args(None, data_root=str(synthetic_ade))
    base = pipeline.study_config(args)
    dense = build_segmentor(base)
    dense_flops = crop_flops(dense)
    model, cfg, knob, flops = pipeline.compress(
        'algm', 0.7, base, dense.state_dict(), dense_flops, None, args)
    assert cfg.model.backbone.compression == dict(
        method='algm', local_layer=0, global_layer=1, threshold=knob / 1000,
        window=(2, 2))
    assert abs(flops / (0.7 * dense_flops) - 1) <= 0.02
    inputs = pipeline.validation_inputs(base, model)
    # as evaluation runs them: 64 x 96 resized to fit 64 x 64, no padding
    assert len(inputs) == 3 and inputs[0].shape == (1, 3, 43, 64)
    per_image = [count_flops(model, x, mode='tensor') for x in inputs]
    assert flops == sum(per_image) / 3
    assert pipeline.flops_spread(model, base) == dict(
        flops_min=min(per_image), flops_max=max(per_image))
    with pytest.raises(CalibrationError):
        pipeline.compress('algm', 0.05, base, dense.state_dict(),
                          dense_flops, None, args)


def test_a_cached_row_is_keyed_by_its_variants_settings(tmp_path,
                                                       monkeypatch):
    """The key changes with anything that defines a variant (its options,
    its centres' placement and ranking, its compression at any knob) and
    with nothing else; it does not hang on the order of dict keys."""
    args = tiny_args(tmp_path)
    base = pipeline.study_config(args)

    def key(method):
        return pipeline.settings_key(
            pipeline.variant_settings(method, base, args))

    assert key('res-content') == key('res-content')
    assert pipeline.settings_key(dict(a=1, b=[2, 3])) == \
        pipeline.settings_key(dict(b=[2, 3], a=1))
    # the same compression at every knob, other centres
    assert pipeline.variant_settings('pm-row', base, args)['compression'] \
        == pipeline.variant_settings('random', base, args)['compression']
    assert key('pm-row') != key('random')  # placement
    assert key('res-content') != key('res-content-even')  # ranking
    keys = {m: key(m) for m in ('res-content', 'tome', 'mstm', 'hourglass',
                                'algm', 'mpm')}
    assert len(set(keys.values())) == len(keys)
    # a default written out is the same setting; another value is not
    variant = METHODS['res-content']
    assert 'neighbourhood' not in variant.options
    replace_variant(monkeypatch, dataclasses.replace(
        variant, options=dict(variant.options,
                              neighbourhood=variant.option('neighbourhood'))))
    assert key('res-content') == keys['res-content']
    replace_variant(monkeypatch, dataclasses.replace(
        variant, options=dict(variant.options, neighbourhood=5)))
    assert key('res-content') != keys['res-content']


def replace_variant(monkeypatch, variant):
    """The study's variants (read from the registry at every use) with
    ``variant`` in place of the one of its name, for this test."""
    from mmseg_pm.apis import knobs
    every = dict(METHODS)
    monkeypatch.setattr(knobs, 'study_methods',
                        lambda: dict(every, **{variant.name: variant}))


@pytest.mark.slow  # a whole study run
def test_one_method_end_to_end(tmp_path, monkeypatch):
    """From Python with keyword arguments, then the command line with the
    same settings, which reuses every cached stage of the first."""
    result = pipeline.run_study(
        work_dir=str(tmp_path / 'work'), out_dir=str(tmp_path / 'out'),
        img_size=64, num_layers=4, num_train=4, num_val=2, batch_size=2,
        dense_iters=2, finetune_iters=2, score_iters=1, methods=['pm-row'],
        budgets=[0.8], speed_repeats=2)
    argv = ['--work-dir', str(tmp_path / 'work'), '--out-dir',
            str(tmp_path / 'out'), '--img-size', '64', '--num-layers', '4',
            '--num-train', '4', '--num-val', '2', '--batch-size', '2',
            '--dense-iters', '2', '--finetune-iters', '2', '--score-iters',
            '1', '--methods', 'pm-row', '--budgets', '0.8',
            '--speed-repeats', '2']
    [row] = result['rows']
    assert row['method'] == 'pm-row' and row['budget'] == 0.8
    assert abs(row['fraction'] / 0.8 - 1) <= 0.02
    for key in ('miou_before', 'miou_after', 'images_per_s'):
        assert math.isfinite(row[key])
    assert Path(row['finetuned']).is_file()
    saved = json.loads((tmp_path / 'out/results.json').read_text())
    assert saved['rows'][0]['miou_after'] == row['miou_after']
    assert 'not ADE20K' in saved['note']
    table = (tmp_path / 'out/table.md').read_text()
    assert '| pm-row | 80% |' in table and '| dense |' in table
    assert (tmp_path / 'out/miou_vs_gflops.png').stat().st_size > 10000
    assert row['windows']['max_window'] >= 1

    # the command line with the same settings reuses every trained model
    finetuned = Path(row['finetuned']).stat().st_mtime_ns
    again = study_cli.main(argv)
    assert Path(row['finetuned']).stat().st_mtime_ns == finetuned
    assert all(stage['reused'] for stage in again['stages'][:-1])
    assert again['rows'][0]['miou_after'] == row['miou_after']

    # another distillation recipe distils again, but reuses the
    # compressed model and its evaluation
    compressed = Path(row['compressed']).stat().st_mtime_ns
    recipe = pipeline.distill_recipe()
    recipe['optim_wrapper']['optimizer']['lr'] *= 2
    monkeypatch.setattr(pipeline, 'distill_recipe', lambda: recipe)
    third = study_cli.main(argv)
    assert Path(row['compressed']).stat().st_mtime_ns == compressed
    assert Path(row['finetuned']).stat().st_mtime_ns != finetuned
    assert third['rows'][0]['miou_before'] == row['miou_before']
    reused = {s['stage']: s['reused'] for s in third['stages']}
    assert reused['pm-row_80'] and not reused['pm-row_80 + FT']

    # the variant's settings changed under the same name: its row is
    # computed again, not read from the cache
    variant = METHODS['pm-row']
    replace_variant(monkeypatch, dataclasses.replace(
        variant, options=dict(variant.options, rule='nearest')))
    fourth = study_cli.main(argv)
    reused = {s['stage']: s['reused'] for s in fourth['stages']}
    assert reused['dense'] and reused['scores']
    assert not reused['pm-row_80'] and not reused['pm-row_80 + FT']
    assert fourth['rows'][0]['compression']['rule'] == 'nearest'
    assert Path(row['compressed']).stat().st_mtime_ns != compressed


def test_hourglass_path_is_ordered_and_counted_as_modelled(tmp_path):
    """The knob's settings start at the authors' relative depth, get
    cheaper at every step, and the counted FLOPs of a setting are the
    modelled ones (blocks, k-means, reconstruction) plus the dense rest."""
    from mmseg_pm.compression.hourglass import hourglass_flops, hourglass_path
    from mmseg_pm.apis.knobs import knob_text
    path = hourglass_path(144, 8, 64)
    assert path[0] == (3, (12, 11)) and path[-1] == (1, (1, 1))
    costs = [hourglass_flops(a, h * w, 144, 8, 64) for a, (h, w) in path]
    assert all(a > b for a, b in zip(costs, costs[1:]))
    assert {a for a, _ in path} == {1, 2, 3}
    assert all(h >= w and (h - w <= 1 or 2 * h <= 3 * w)
               for _, (h, w) in path)
    args = tiny_args(tmp_path, img_size=96, num_layers=8)
    base = pipeline.study_config(args)
    dense = crop_flops(build_segmentor(base))
    for knob in (0, 17, 39):
        cfg = pipeline.compressed_config(base, compression_for(
            'hourglass', knob, 8, 144, embed_dims=64))
        alpha, (h, w) = path[knob]
        assert cfg.model.backbone.compression == dict(
            method='hourglass', alpha=alpha, clusters=(h, w))
        assert dense - crop_flops(build_segmentor(cfg)) == \
            hourglass_flops(8, 0, 144, 8, 64, outputs=0) - costs[knob]
    assert knob_text('hourglass', 39, 144, 8, 64) == \
        '1x1 clusters from block 1'


@pytest.mark.parametrize('img_size', [96, 192])
def test_hourglass_reaches_every_budget_of_the_study(tmp_path, img_size):
    args = tiny_args(tmp_path, img_size=img_size, num_layers=8)
    base = pipeline.study_config(args)
    dense = build_segmentor(base)
    dense_flops = crop_flops(dense)
    for budget in (0.7, 0.5, 0.4):
        model, cfg, knob, flops = pipeline.compress(
            'hourglass', budget, base, dense.state_dict(), dense_flops,
            None, args)
        assert abs(flops / (budget * dense_flops) - 1) <= 0.02


def test_command_line_defaults_are_the_settings_defaults(tmp_path):
    """One place for each default (the parser reads the dataclass), and
    the cache stamp of the defaults names the settings a cached variant of
    the committed study was computed with."""
    from mmseg_pm.utils.errors import UsageError
    from mmseg_pm.cli import settings_from
    parsed = settings_from(StudySettings, study_cli.build_parser().parse_args(
        []))
    assert parsed == StudySettings()
    assert parsed.data_root == 'work_dirs/study/data'
    assert parsed.stamp() == dict(
        data_root='work_dirs/study/data', dense_iters=600, finetune_iters=60,
        score_iters=20, seed=0, img_size=96, num_layers=8, num_train=400,
        num_val=100, batch_size=8, prune_rate=0.0, tolerance=0.02)
    assert StudySettings(budgets=[0.4, 0.7, 0.4]).budgets == (0.7, 0.4)
    with pytest.raises(UsageError, match='--img-size must be a multiple'):
        StudySettings(img_size=65)
