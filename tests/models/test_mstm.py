"""MSTM (method='mstm') inside PMVisionTransformer."""

import pytest
import torch
from mmengine.config import Config
from mmseg.registry import MODELS

import mmseg_pm.models  # noqa: F401
from mmseg_pm.compression.config import parse_compression
from mmseg_pm.compression.mstm import (class_attention, coarse_cells,
                                       crucial_token_matching)
from mmseg_pm.compression.ops import merge_tokens
from mmseg_pm.models import PMVisionTransformer
from tests.helpers import (CONFIGS, TINY,
                           assert_each_image_merges_its_own_way,
                           assert_flops_follow_token_counts, randomise,
                           tiny_pm, token_counts)

MSTM = dict(method='mstm', prune_layers=[0, 2], keep_rate=0.5)
ALL = (0, 1, 2, 3)


def mstm_from(dense, compression=MSTM, **kwargs):
    """An MSTM model carrying ``dense``'s weights (coarse branch at zero)."""
    model = tiny_pm(compression=compression, **kwargs)
    missing = model.load_state_dict(dense.state_dict(), strict=False)
    assert missing.missing_keys == ['token_merger.coarse.weight',
                                    'token_merger.coarse.bias'] or \
        not compression.get('coarse', True)
    return model


def test_config_and_construction_errors():
    cfg = parse_compression(dict(method='mstm', prune_layers=[5, 2],
                                 keep_rate=[0.5, 0.8]), 12)
    assert cfg.keep_rates == {2: 0.8, 5: 0.5} and cfg.coarse
    for bad, match in [
        (dict(method='mstm'), 'needs prune_layers'),
        (dict(method='mstm', prune_layers=[4]), r'\[4\] are outside'),
        (dict(method='mstm', prune_layers=[1, 1]), 'twice'),
        (dict(method='mstm', prune_layers=[1], keep_rate=1.5), 'keep_rate'),
        (dict(method='mstm', prune_layers=[1, 2], keep_rate=[0.5]),
         '1 entries for 2 layers'),
        (dict(method='mstm', prune_layers=[1], layers=[1]),
         "unknown compression keys \\['layers'\\] for method='mstm'"),
        (dict(method='evit', prune_layers=[1]), 'must be one of'),
    ]:
        with pytest.raises(ValueError, match=match):
            PMVisionTransformer(**TINY, compression=bad)
    with pytest.raises(ValueError, match='needs with_cls_token=True'):
        PMVisionTransformer(**TINY, compression=MSTM, with_cls_token=False)
    with pytest.raises(ValueError, match='no static structures'):
        PMVisionTransformer(**TINY, compression=MSTM).set_structures([])


def test_importance_weighted_merge_into_most_similar_crucial_token():
    # 5 patch tokens; importance picks 1 and 3 as crucial (keep 2)
    metric = torch.tensor([[[1., 0.], [1., .1], [-1., .2], [-1., 0.],
                            [.9, .3]]])
    importance = torch.tensor([[.1, .4, .05, .3, .15]])
    assign = crucial_token_matching(metric, importance, 2)
    assert assign.tolist() == [[0, 0, 1, 1, 0]]
    x = torch.arange(10.).view(1, 5, 2)
    merged, total = merge_tokens(x, assign, importance, 2)
    w = importance[0]
    expected0 = (w[0] * x[0, 0] + w[1] * x[0, 1] + w[4] * x[0, 4]) / (
        w[0] + w[1] + w[4])
    expected1 = (w[2] * x[0, 2] + w[3] * x[0, 3]) / (w[2] + w[3])
    assert torch.allclose(merged[0], torch.stack((expected0, expected1)))
    assert torch.allclose(total, torch.tensor([[.65, .35]]))
    # class attention is the class row of softmax(q k^T / sqrt(d)), head mean
    q, k = torch.randn(2, 3, 6, 4), torch.randn(2, 3, 6, 4)
    probs = torch.softmax(q @ k.transpose(-2, -1) / 2, dim=-1)
    assert torch.allclose(class_attention(q, k), probs[:, :, 0, 1:].mean(1))
    cell, num_cells = coarse_cells((3, 5))  # odd grid: edge cells are smaller
    assert num_cells == 6
    assert cell.view(3, 5).tolist() == [[0, 0, 1, 1, 2], [0, 0, 1, 1, 2],
                                         [3, 3, 4, 4, 5]]


def test_token_counts_per_layer_and_full_grid_at_every_out_index():
    model = mstm_from(randomise(tiny_pm()), out_indices=ALL)
    x = torch.randn(3, 3, 48, 80)  # 3 x 5 = 15 patch tokens
    # 15 -> 7 crucial at block 0 -> 3 at block 2 (+ the class token)
    assert model.token_merger.tokens_per_block(16, 4) == [8, 8, 4, 4]
    assert token_counts(model, x) == [16, 8, 8, 8, 8, 4, 4, 4]
    with torch.no_grad():
        outs = model(x)
    for out, groups in zip(outs, [7, 7, 3, 3]):
        assert out.shape == (3, 32, 3, 5)
        for image in out.flatten(2).transpose(1, 2):  # members share a token
            assert len(torch.unique(image, dim=0)) == groups


def test_at_initialisation_equals_the_dense_model_exactly():
    dense = randomise(tiny_pm(out_indices=ALL))
    x = torch.randn(2, 3, 48, 80)
    model = mstm_from(dense, dict(method='mstm', prune_layers=[0, 2],
                                  keep_rate=1.0), out_indices=ALL)
    with torch.no_grad():
        for a, b in zip(dense(x), model(x)):
            assert torch.equal(a, b)
        merging = mstm_from(dense, MSTM, out_indices=ALL)
        with merging.dense_forward():  # the scoring pass's switch
            for a, b in zip(dense(x), merging(x)):
                assert torch.equal(a, b)
        model.token_merger.coarse.weight.normal_()  # a trained branch counts
        assert not torch.allclose(dense(x)[0], model(x)[0], atol=1e-3)


def test_batch_merges_each_image_its_own_way():
    model = mstm_from(randomise(tiny_pm()), out_indices=(1, 3))
    with torch.no_grad():  # a trained coarse branch
        model.token_merger.coarse.weight.normal_(std=0.1)
    assert_each_image_merges_its_own_way(model, torch.randn(3, 3, 48, 80))


def test_gradients_reach_the_backbone_and_the_coarse_projection():
    model = mstm_from(randomise(tiny_pm()))
    model.train()
    model(torch.randn(2, 3, 48, 80))[0].square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_flops_fall_as_the_token_counts_imply():
    dense = randomise(tiny_pm())
    model = mstm_from(dense, dict(MSTM, coarse=False))
    counts = model.token_merger.tokens_per_block(16, 4)
    assert_flops_follow_token_counts(dense, model, counts,
                                     torch.randn(2, 3, 48, 80))


def test_configs_build_and_run():
    name = 'mstm-segmenter_vit-tiny_mask_synthetic-ade-64x64.py'
    cfg = Config.fromfile(CONFIGS / 'synthetic' / name)
    backbone = MODELS.build(cfg.model.backbone)
    backbone.init_weights()
    with torch.no_grad():
        out = backbone.eval()(torch.randn(2, 3, 64, 64))[0]
    assert out.shape == (2, 64, 8, 8)
    assert torch.equal(backbone.token_merger.coarse.weight,
                       torch.zeros(64, 64))  # init_weights leaves it at zero
    name = 'mstm-segmenter_vit-s_mask_8xb1-160k_ade20k-512x512.py'
    cfg = Config.fromfile(CONFIGS / 'segmenter' / name)
    assert cfg.model.backbone.type == 'PMVisionTransformer'
    parsed = parse_compression(cfg.model.backbone.compression, 12)
    assert parsed.method == 'mstm'
