"""The other heads with the compressed backbone: the UPerNet config
(MultiLevelNeck, four outputs) and the linear FCN config, shrunk, take a
training step: the loss is finite and gradients reach every compressed
unit's merge and reconstruct weights (the full grid comes back at every
out index, whatever the head)."""
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

from tests.helpers import CONFIGS, segmentation_batches

IMG = (64, 64)  # 4 x 4 tokens of 16 px
NUM_CLASSES = 5
WIDTH = 32
SMALL_BACKBONE = dict(img_size=IMG, embed_dims=WIDTH, num_layers=4,
                      num_heads=2, drop_path_rate=0.0)
BN = dict(type='BN', requires_grad=True)  # SyncBN needs a process group

# config -> (compressed blocks, the small model's overrides)
HEADS = {
    'upernet/pm-vit_vit-b16_mln_upernet_8xb2-80k_ade20k-512x512.py': (
        [1, 2, 3],
        dict(backbone=dict(SMALL_BACKBONE, out_indices=(0, 1, 2, 3)),
             neck=dict(in_channels=[WIDTH] * 4, out_channels=WIDTH),
             decode_head=dict(in_channels=[WIDTH] * 4, channels=16,
                              num_classes=NUM_CLASSES, norm_cfg=BN),
             auxiliary_head=dict(in_channels=WIDTH, channels=16,
                                 num_classes=NUM_CLASSES, norm_cfg=BN))),
    'segmenter/pm-segmenter_vit-s_fcn_8xb1-160k_ade20k-512x512.py': (
        [1, 2, 3],
        dict(backbone=SMALL_BACKBONE,
             decode_head=dict(in_channels=WIDTH, channels=WIDTH,
                              num_classes=NUM_CLASSES))),
}


def small_segmentor(name: str):
    """The config's segmentor with its head types, neck and compression
    kept, at a small width, depth, crop and class count."""
    layers, overrides = HEADS[name]
    cfg = Config.fromfile(str(CONFIGS / name))
    assert cfg.model.backbone.type == 'PMVisionTransformer'
    compression = dict(cfg.model.backbone.compression, layers=layers,
                       keep_rate=0.5)
    overrides['backbone'] = dict(overrides['backbone'],
                                 compression=compression)
    cfg.merge_from_dict(dict(model=dict(
        overrides, pretrained=None,
        data_preprocessor=dict(size=IMG))))
    cfg.model.backbone.pop('init_cfg', None)
    init_default_scope('mmseg')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return cfg, model


@pytest.mark.parametrize('name', sorted(HEADS))
def test_training_step_reaches_the_merge_and_reconstruct_weights(name):
    cfg, model = small_segmentor(name)
    assert [type(m).__name__ for m in (model.decode_head,
                                       getattr(model, 'neck', None))] == \
        [cfg.model.decode_head.type,
         cfg.model.neck.type if 'neck' in cfg.model else 'NoneType']
    compressors = model.backbone.token_compressors
    assert len(compressors) == len(HEADS[name][0])
    model.train()
    batch = segmentation_batches(1, 2, IMG, NUM_CLASSES, seed=4)[0]
    data = model.data_preprocessor(batch, training=True)
    loss, _ = model.parse_losses(model(**data, mode='loss'))
    assert torch.isfinite(loss)
    loss.backward()
    for key, unit in compressors.items():
        for weight in (unit.merge_weight, unit.reconstruct_weight):
            assert weight.requires_grad, key
        assert unit.merge_weight.grad is not None, key
        assert unit.merge_weight.grad.abs().sum() > 0, key
        assert unit.reconstruct_weight.grad is not None, key
        assert unit.reconstruct_weight.grad.abs().sum() > 0, key
