"""The Python API as a user calls it: wrong types are UsageErrors naming
the problem and the fix; a model from init_segmentor is a drop-in for
mmseg's init_model (mmseg.apis.inference_model runs on it and agrees with
mmseg's own init_model + inference_model); the compression of a config is
checked when it is loaded; checkpoints of other methods or widths are
named as such."""
import numpy as np
import pytest
import torch
from mmengine.config import Config
from torch import nn

from mmseg_pm.apis import crop_flops, init_segmentor
from mmseg_pm.apis.config import load_config
from mmseg_pm.datasets.synthetic_ade import make_sample
from mmseg_pm.models.checkpoint import load_checkpoint_into
from mmseg_pm.utils.errors import UsageError
from tests.helpers import CONFIGS, DENSE_TINY, PM_TINY

TOME_TINY = CONFIGS / 'synthetic/tome-segmenter_vit-tiny_mask_synthetic-ade-64x64.py'  # noqa: E501
MSTM_TINY = CONFIGS / 'synthetic/mstm-segmenter_vit-tiny_mask_synthetic-ade-64x64.py'  # noqa: E501


@pytest.mark.parametrize('call, message', [
    (lambda: init_segmentor(123), 'config must be a config file path'),
    (lambda: init_segmentor(str(DENSE_TINY), cfg_options=['a=1']),
     'cfg_options must be a dict'),
    (lambda: init_segmentor(str(DENSE_TINY), device='gpu7'),
     "'gpu7' is not a torch device"),
    (lambda: init_segmentor(str(DENSE_TINY), checkpoint=5),
     'checkpoint must be a path'),
    (lambda: load_checkpoint_into(nn.Linear(2, 2), None),
     'checkpoint must be a path'),
    (lambda: crop_flops(nn.Linear(2, 2)), 'crop_flops needs a segmentor'),
])
def test_wrong_types_are_usage_errors(call, message):
    with pytest.raises(UsageError, match=message):
        call()


@pytest.mark.parametrize('inputs, message', [
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), 'torch.uint8 images'),
    (torch.zeros(1, 1, 64, 64), 'got 1 channels'),
    (torch.zeros(3, 64, 64), '3-D input'),
    (torch.zeros(0, 3, 64, 64), 'empty batch'),
    (torch.zeros(1, 3, 64, 64, dtype=torch.float64), 'weights are '
     'torch.float32'),
])
def test_backbone_names_bad_inputs(inputs, message):
    model = init_segmentor(str(PM_TINY))
    with pytest.raises(UsageError, match=message):
        model(inputs, mode='tensor')


@pytest.mark.parametrize('config, key, value, message', [
    (PM_TINY, 'layers', [7], r'outside blocks 0\.\.3'),
    (PM_TINY, 'prune_rate', 1.0, r'prune_rate must be in \[0, 1\)'),
    (PM_TINY, 'spans', [[2, 1]], 'first > last'),
    (PM_TINY, 'spans', [[0, 2], [1, 3]], 'overlap'),
    (TOME_TINY, 'r', 60, 'can merge at most 32'),
    (MSTM_TINY, 'prune_layers', [9], r'outside blocks 0\.\.3'),
])
def test_compression_is_checked_on_load(config, key, value, message):
    options = {f'model.backbone.compression.{key}': value}
    if key == 'spans':
        options.update({'model.backbone.compression.mode': 'span',
                        'model.backbone.compression.layers': None})
    for load in (lambda: load_config(str(config), options),
                 lambda: init_segmentor(str(config), cfg_options=options)):
        with pytest.raises(UsageError, match=message) as info:
            load()
        assert 'model.backbone.compression is invalid' in str(info.value)
    cfg = Config.fromfile(str(config))
    cfg.merge_from_dict(options)
    with pytest.raises(UsageError, match=message):
        init_segmentor(cfg)  # a Config object is checked too


def test_a_config_without_a_model_is_named(tmp_path):
    config = tmp_path / 'nomodel.py'
    config.write_text('x = 1\n')
    for call in (lambda: load_config(str(config), None),
                 lambda: init_segmentor(str(config)),
                 lambda: init_segmentor(Config(dict(x=1)))):
        with pytest.raises(UsageError, match='defines no model'):
            call()


def test_other_methods_and_widths_are_named(tmp_path):
    pruned = init_segmentor(str(PM_TINY)).state_dict()
    for config, method in ((TOME_TINY, "ToMe (compression method='tome')"),
                           (DENSE_TINY, 'dense')):
        model = init_segmentor(str(config))
        with pytest.raises(UsageError) as info:
            load_checkpoint_into(model, dict(state_dict=pruned))
        assert 'Prune-and-Merge structures' in str(info.value)
        assert f"the config's model is {method}" in str(info.value)
    mstm = init_segmentor(str(MSTM_TINY)).state_dict()
    with pytest.raises(UsageError, match='holds token-merger weights'):
        load_checkpoint_into(init_segmentor(str(DENSE_TINY)),
                             dict(state_dict=mstm))
    narrow = init_segmentor(str(DENSE_TINY), cfg_options={
        'model.backbone.embed_dims': 32, 'model.decode_head.in_channels': 32,
        'model.decode_head.channels': 32}).state_dict()
    with pytest.raises(UsageError) as info:
        load_checkpoint_into(init_segmentor(str(DENSE_TINY)),
                             dict(state_dict=narrow))
    assert 'has every weight name' in str(info.value)
    assert 'other shapes' in str(info.value)


@pytest.mark.parametrize('config', [DENSE_TINY, PM_TINY])
def test_mmseg_inference_model_takes_our_model(config, tmp_path):
    """mmseg.apis.inference_model on init_segmentor's model gives what it
    gives on mmseg's own init_model with the same weights."""
    from mmseg.apis import inference_model, init_model

    torch.manual_seed(0)
    ours = init_segmentor(str(config))
    checkpoint = tmp_path / 'model.pth'
    torch.save(dict(state_dict=ours.state_dict(), meta={}), checkpoint)
    ours = init_segmentor(str(config), str(checkpoint))
    theirs = init_model(str(config), str(checkpoint), device='cpu')
    # no meta in the checkpoint: the test dataset's classes (mmseg's
    # init_model falls back to numbered ones)
    assert len(ours.dataset_meta['classes']) == 150
    assert ours.dataset_meta['classes'][0] == 'wall'
    image = make_sample((64, 64), np.random.default_rng(0))[0][..., ::-1]
    image = np.ascontiguousarray(image)  # BGR, as mmcv reads files
    a = inference_model(ours, image)
    b = inference_model(theirs, image)
    assert torch.equal(a.pred_sem_seg.data, b.pred_sem_seg.data)
    assert torch.allclose(a.seg_logits.data, b.seg_logits.data, atol=1e-5)


@pytest.mark.parametrize('method', ['tome', 'mstm', 'algm', 'hourglass',
                                    'mpm'])
def test_a_dense_checkpoint_with_each_method(method):
    """docs/peers.md, "A dense checkpoint": the methods without weights of
    their own evaluate a dense checkpoint as it is; MSTM's coarse branch is
    not in it, so evaluation refuses it naming the two weights, fine-tuning
    (``require='most'``) starts the branch at zero, and without the branch
    it loads as it is."""
    config = str(CONFIGS / f'synthetic/{method}-segmenter_vit-tiny_mask_'
                 'synthetic-ade-64x64.py')
    dense = dict(state_dict=init_segmentor(str(DENSE_TINY)).state_dict())
    if method != 'mstm':
        init_segmentor(config, dense)
        return
    coarse = ['backbone.token_merger.coarse.weight',
              'backbone.token_merger.coarse.bias']
    with pytest.raises(UsageError) as info:
        init_segmentor(config, dense)
    assert f'2 weights of the config\'s model are not in the checkpoint ' \
        f'(e.g. {coarse})' in str(info.value)
    model = init_segmentor(config, dense, require='most')
    weights = model.state_dict()
    assert all(not weights[k].any() for k in coarse)
    init_segmentor(config, dense, cfg_options={
        'model.backbone.compression.coarse': False})
