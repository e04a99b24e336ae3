"""The token-scoring pass over a segmentor against an independent
computation (docs/prune_and_merge.md section 1)."""
import copy

import pytest
import torch
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

import mmseg_pm.models  # noqa: F401
from mmseg_pm.apis import token_scores
from tests.helpers import segmentation_batches, tiny_segmentor_cfg

IMG = (48, 80)  # 3 x 5 tokens of 16 px: a non-square grid
NUM_CLASSES = 5


def segmentor_cfg(compression):
    return tiny_segmentor_cfg(IMG, NUM_CLASSES, drop_path_rate=0.1,
                              drop_rate=0.1,
                              norm_cfg=dict(type='LN', eps=1e-6),
                              compression=compression)


def build(compression):
    init_default_scope('mmseg')
    torch.manual_seed(0)
    model = MODELS.build(segmentor_cfg(compression))
    model.init_weights()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # larger weights: non-uniform attention
        for name, p in model.named_parameters():
            if 'token_compressors' not in name and p.ndim > 1:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def batches(num=2, batch_size=2, size=IMG):
    return segmentation_batches(num, batch_size, size, NUM_CLASSES, seed=2)


def reference_scores(model, data):
    """Straightforward per-layer |sum A * dL/dA| / (B heads T), summed over
    batches, by a full backward with retained A on a dense model."""
    model.eval()
    seen = []

    def keep(probs):
        probs.retain_grad()
        seen.append(probs)

    for layer in model.backbone.layers:
        layer.attn.probs_hook = keep
    totals = None
    for batch in data:
        seen.clear()
        model.zero_grad()
        batch = model.data_preprocessor(batch, training=True)
        losses = model(**batch, mode='loss')
        sum(v for k, v in losses.items() if 'loss' in k).backward()
        rows = []
        for a in seen:
            b, h, t, _ = a.shape
            v = torch.einsum('bhqk,bhqk->k', a.double(), a.grad.double())
            rows.append((v / (b * h * t))[1:].abs())
        rows = torch.stack(rows)
        totals = rows if totals is None else totals + rows
    return totals / (totals.norm(dim=1, keepdim=True) + 1e-8)


def test_scores_equal_an_independent_computation_and_change_nothing():
    compressed = build(dict(mode='layer', layers=[1, 2], keep_rate=0.4))
    dense = build(None)  # the same weights without compressors: the oracle
    dense.load_state_dict({k: v for k, v in compressed.state_dict().items()
                           if 'token_compressors' not in k})
    data = batches()
    expected = reference_scores(dense, data)

    compressed.train()
    compressed.backbone.patch_embed.requires_grad_(False)
    before = copy.deepcopy(compressed.state_dict())
    structures = compressed.backbone.structures()
    scores = token_scores(compressed, data, progress=False)

    assert scores.shape == (3, 15) and scores.dtype == torch.float32
    torch.testing.assert_close(scores.double(), expected, rtol=1e-6,
                               atol=1e-9)
    assert (scores > 0).all()
    # nothing about the model changed
    after = compressed.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in compressed.parameters())
    assert compressed.training
    assert not any(p.requires_grad
                   for p in compressed.backbone.patch_embed.parameters())
    assert compressed.backbone.layers[1].attn.probs_hook is None
    assert not compressed.backbone.reducer.bypass
    for a, b in zip(structures, compressed.backbone.structures()):
        assert torch.equal(a.group, b.group)
    # num_iters takes the first batches; eval mode makes it reproducible
    first = token_scores(compressed, data, num_iters=1, progress=False)
    torch.testing.assert_close(
        first.double(), reference_scores(dense, data[:1]), rtol=1e-6,
        atol=1e-9)


def test_scoring_refuses_a_crop_off_the_structure_grid():
    model = build(dict(mode='layer', layers=[1], keep_rate=0.4))
    model.data_preprocessor.size = (64, 64)
    with pytest.raises(ValueError, match='img_size'):
        token_scores(model, batches(1, 1, size=(64, 64)), progress=False)


def test_scoring_needs_a_pm_backbone():
    cfg = segmentor_cfg(None)
    cfg['backbone'] = dict(type='VisionTransformer', img_size=IMG,
                           patch_size=16, embed_dims=32, num_layers=1,
                           num_heads=2)
    init_default_scope('mmseg')
    with pytest.raises(TypeError, match='PMVisionTransformer'):
        token_scores(MODELS.build(cfg), batches(1), progress=False)
