"""ONNX export of tiny segmentors through tools/export_onnx.py, checked with
onnxruntime against PyTorch (the tool's own --check, and here again)."""
import importlib.util
from pathlib import Path

import onnx
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

import mmseg_pm  # noqa: F401
from mmseg_pm.compression import build_structure
from mmseg_pm.export import load_segmentor, onnx_parity, parity_inputs

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / 'configs/synthetic' / \
    'segmenter_vit-tiny_mask_synthetic-ade-64x64.py'

spec = importlib.util.spec_from_file_location('export_onnx',
                                              ROOT / 'tools/export_onnx.py')
export_tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(export_tool)

# the synthetic Segmenter, shrunk: 2 blocks of width 32, 4 classes
TINY = """_base_ = ['{base}']
model = dict(
    backbone=dict(type='{backbone}', embed_dims=32, num_layers=2,
                  num_heads=2{compression}),
    decode_head=dict(in_channels=32, channels=32, embed_dims=32,
                     num_classes=4, num_layers=1))
"""
COMPRESSION = dict(
    dense=None,
    pm="dict(mode='layer', layers=[1], keep_rate=0.4, impl='sparse')",
    pm_pinv="dict(mode='layer', layers=[1], keep_rate=0.4, impl='sparse', "
    "reconstruct='pinv')",
    tome="dict(method='tome', layers=[0, 1], r=8)")


def tiny_checkpoint(tmp_path, method):
    """A config file and a checkpoint of its (randomly initialised) model;
    Prune and Merge gets a structure with merged and pruned tokens."""
    compression = COMPRESSION[method]
    config = tmp_path / f'{method}.py'
    config.write_text(TINY.format(
        base=BASE, backbone='VisionTransformer' if compression is None
        else 'PMVisionTransformer',
        compression='' if compression is None
        else f', compression={compression}'))
    init_default_scope('mmseg')
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(str(config)).model)
    model.init_weights()
    if method.startswith('pm'):
        g = torch.Generator().manual_seed(0)
        order = torch.randperm(64, generator=g)
        model.backbone.set_structures([build_structure(
            (8, 8), order[:20], order[20:30], torch.rand(64, generator=g))])
    checkpoint = tmp_path / f'{method}.pth'
    torch.save(dict(state_dict=model.state_dict(), meta={}), checkpoint)
    return config, checkpoint


@pytest.mark.parametrize('method,upsample', [('dense', True),
                                             ('pm', False),
                                             ('pm_pinv', False)])
def test_export_matches_pytorch(tmp_path, method, upsample, capsys):
    config, checkpoint = tiny_checkpoint(tmp_path, method)
    out = tmp_path / 'onnx' / 'model.onnx'
    args = [str(config), str(checkpoint), '--out', str(out), '--check']
    report = export_tool.main(args + (['--upsample'] if upsample else []))
    printed = capsys.readouterr().out
    assert 'max abs diff' in printed and 'OK' in printed
    assert report['method'] == method.split('_')[0]
    assert report['max_abs_diff'] <= 1e-4
    # one complete file, nothing left over from the atomic write
    assert sorted(p.name for p in out.parent.iterdir()) == ['model.onnx']
    graph = onnx.load(str(out)).graph
    dims = [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
    # fixed shapes: logits at the input size, or the decoder's 1/8
    assert dims == ([1, 4, 64, 64] if upsample else [1, 4, 8, 8])
    if method.startswith('pm'):
        ops = {node.op_type for node in graph.node}
        assert not ops & {'TopK', 'Sort'}  # the structure is a constant
    # an independent check on other inputs
    _, model = load_segmentor(str(config), str(checkpoint))
    diff = onnx_parity(model, out, parity_inputs((64, 64), seed=1),
                       upsample=upsample)
    assert diff <= 1e-4
    with pytest.raises(SystemExit, match='exists'):
        export_tool.main(args)


def test_input_dependent_merging_exports_or_fails_clearly(tmp_path):
    """ToMe sorts per image: the tool either exports it with parity or says
    which operation it could not translate, and leaves no file behind."""
    config, checkpoint = tiny_checkpoint(tmp_path, 'tome')
    out = tmp_path / 'onnx' / 'tome.onnx'
    try:
        report = export_tool.main([str(config), str(checkpoint), '--out',
                                   str(out), '--check'])
    except SystemExit as err:
        assert 'ONNX export of the tome model failed' in str(err.code)
        assert not out.parent.exists() or not any(out.parent.iterdir())
    else:
        assert report['max_abs_diff'] <= 1e-4
