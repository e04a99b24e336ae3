"""Every registered method goes through every tool's path, and only
``compression/`` (and the configs) names a method.

The path, on tiny models: its config (the knob's ``compression=`` dict,
parsed by its config class) -> its model -> a study row (calibrated to a
budget, its knob in words) -> a benchmark row (timed, or a clear
'cannot reach') -> a picture of its merges -> an ONNX file, or a clear
refusal. A method added to the registry is tested here without a line of
this file changing.
"""
import ast
from pathlib import Path

import mmcv
import pytest
import torch

from mmseg_pm.compression.registry import (ModelShape, method_names,
                                           method_spec, method_specs)
from tests.helpers import visualize, write_image

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / 'configs/synthetic/pm-segmenter_vit-tiny_mask_synthetic-'
           'ade-64x64.py')


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def study_settings(data_root):
    from mmseg_pm.study import StudySettings
    # a loose tolerance: coarse knobs on 8 x 8 tokens and 4 blocks
    return StudySettings(img_size=64, num_layers=4, data_root=str(data_root),
                         batch_size=2, tolerance=0.25, seed=0)


def study_variant(name: str) -> str:
    """The study's variant of method ``name`` at its config's defaults."""
    from mmseg_pm.apis.knobs import METHODS
    return next(v.name for v in METHODS.values()
                if v.method == name and not v.options)


@pytest.mark.parametrize('name', method_names())
def test_every_method_through_every_tool(name, tmp_path, synthetic_ade,
                                         capsys):
    from mmseg_pm.apis import build_segmentor, crop_flops
    from mmseg_pm.apis.config import write_config
    from mmseg_pm.apis.knobs import knob_text
    from mmseg_pm.benchmark.pipeline import run as run_benchmark
    from mmseg_pm.benchmark.variants import REFERENCE
    from mmseg_pm.compression.config import parse_compression
    from mmseg_pm.study import pipeline

    spec = method_spec(name)
    settings = study_settings(synthetic_ade)
    base = pipeline.study_config(settings)
    width = base.model.backbone.embed_dims

    # config -> model
    shape = ModelShape(64, 4, width)
    lo, hi = spec.knob_range(shape)
    compression = spec.knob_compression((lo + hi) // 2, shape)
    assert type(parse_compression(compression, 4)) is spec.config
    model = build_segmentor(pipeline.compressed_config(base, compression))
    assert model.backbone.reducer.spec == spec
    x = torch.randn(1, 3, 64, 64)
    assert model(x, mode='tensor').shape[-2:] == (8, 8)

    # a study row
    dense = build_segmentor(base)
    scores = torch.rand(4, 64, generator=torch.Generator().manual_seed(0))
    variant = study_variant(name)
    model, cfg, knob, flops = pipeline.compress(
        variant, 0.8, base, dense.state_dict(), crop_flops(dense), scores,
        settings)
    assert abs(flops / (0.8 * crop_flops(dense)) - 1) <= settings.tolerance
    assert knob_text(variant, knob, 64, 4, width)

    # a benchmark row (the reference's rows too: peers match its GFLOPs)
    results = run_benchmark(configs=(TINY, ),
                            variants=tuple(dict.fromkeys((REFERENCE, name))),
                            keep_rates=(0.7, ), parts=('backbone', ),
                            batch_sizes=(1, ), warmup=0, repeats=1,
                            backends=(), memory='none')
    [row] = [r for r in results['rows'] if r['variant'] == name]
    assert spec.label in row['label'] or name == REFERENCE
    if row['unreachable']:
        assert 'outside what this method reaches' in row['unreachable']
    else:
        assert row['timing'][1]['images_per_s'] > 0

    # a picture of its merges
    config = write_config(cfg, tmp_path / 'config.py')
    checkpoint = tmp_path / 'model.pth'
    torch.save(dict(state_dict=model.state_dict(), meta={}), checkpoint)
    image = write_image(tmp_path / 'image.png', (64, 64))
    out = tmp_path / 'tokens.png'
    maps = visualize(config, checkpoint, image, out, '--score-iters', '0',
                     '--dpi', '40')
    assert maps and mmcv.imread(str(out)) is not None
    assert model.backbone.reducer.per_image_merges == spec.per_image_merges
    if spec.per_image_merges:
        assert spec.picture_note in capsys.readouterr().out


def export_cases():
    """Methods an ONNX graph can hold are exported (slow); the others are
    refused before anything is written."""
    for spec in method_specs():
        marks = pytest.mark.slow if spec.fixed_shapes else ()
        yield pytest.param(spec.name, marks=marks, id=spec.name)


@pytest.mark.parametrize('name', export_cases())
def test_every_method_exports_or_is_refused_clearly(name, tmp_path):
    from mmseg_pm.cli import export_onnx as export_tool
    from tests.helpers import build_from_config, shrunk_config_text

    spec = method_spec(name)
    shape = ModelShape(16, 2, 32)  # the shrunk Segmenter at 64 x 64
    lo, hi = spec.knob_range(shape)
    compression = spec.knob_compression((lo + hi) // 2 if lo < 1 else
                                        max(lo, hi // 2), shape)
    config = tmp_path / 'config.py'
    config.write_text(shrunk_config_text(repr(compression), num_classes=4))
    model = build_from_config(config)
    checkpoint = tmp_path / 'model.pth'
    torch.save(dict(state_dict=model.state_dict(), meta={}), checkpoint)
    out = tmp_path / 'onnx' / 'model.onnx'
    try:
        report = export_tool.main([str(config), str(checkpoint), '--out',
                                   str(out), '--check'])
    except SystemExit as err:
        assert not spec.exports, err
        assert spec.no_export in str(err.code)
        assert not out.exists()
    else:
        assert spec.fixed_shapes
        assert report['method'] == name and report['max_abs_diff'] <= 1e-4


# ------------------------------------------------------- no literal names
SCANNED = ('mmseg_pm', 'tools')
ALLOWED = (ROOT / 'mmseg_pm' / 'compression', ROOT / 'mmseg_pm' / 'configs')


def literal_method_names(path: Path, names) -> list:
    """(line, name) of every string constant, and every keyword of a
    ``dict(...)`` call, that is exactly a registered method's name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and node.value in names:
            found.append((node.lineno, node.value))
        elif isinstance(node, ast.Call) and \
                getattr(node.func, 'id', None) == 'dict':
            found += [(node.lineno, k.arg) for k in node.keywords
                      if k.arg in names]
    return found


def test_no_method_is_named_outside_compression():
    """A method is asked for by its description (mmseg_pm.compression.
    registry); only compression/ and the configs spell its name. Text
    that mentions a method inside a longer string is not a name."""
    names = set(method_names())
    offenders = []
    for root in SCANNED:
        for path in sorted((ROOT / root).rglob('*.py')):
            if any(path.is_relative_to(a) for a in ALLOWED):
                continue
            offenders += [f'{path.relative_to(ROOT)}:{line}: {name!r}'
                          for line, name in literal_method_names(path, names)]
    assert not offenders, offenders
