"""ToMe (method='tome') inside PMVisionTransformer."""

import pytest
import torch
from mmengine.config import Config
from mmseg.registry import MODELS

import mmseg_pm.models  # noqa: F401
from mmseg_pm.compression.config import parse_compression
from mmseg_pm.compression.ops import merge_tokens
from mmseg_pm.compression.tome import bipartite_soft_matching
from mmseg_pm.models import PMVisionTransformer
from mmseg_pm.models.backbones.pm_vit import Attention
from tests.helpers import (CONFIGS, TINY,
                           assert_each_image_merges_its_own_way,
                           assert_flops_follow_token_counts, randomise,
                           source_maps, tiny_pm, token_counts)

ALL = (0, 1, 2, 3)


def tome_from(dense, compression, **kwargs):
    model = tiny_pm(compression=compression, **kwargs)
    model.load_state_dict(dense.state_dict(), strict=True)
    return model


def test_config_errors():
    assert parse_compression(dict(method='tome', r=8), 4).r == \
        {0: 8, 1: 8, 2: 8, 3: 8}
    assert parse_compression(dict(method='tome', layers=[3, 1], r=[2, 5]),
                             4).r == {1: 5, 3: 2}
    for bad, match in [
        (dict(method='tome', layers=[1]), 'needs r='),
        (dict(method='tome', r=-1), 'non-negative int'),
        (dict(method='tome', r=0.5), 'non-negative int'),
        (dict(method='tome', layers=[1, 2], r=[1, 2, 3]), '3 entries'),
        (dict(method='tome', layers=[0, 4], r=2), r'\[4\] are outside'),
        (dict(method='tome', r=2, keep_rate=0.5), 'unknown compression keys'),
    ]:
        with pytest.raises(ValueError, match=match):
            PMVisionTransformer(**TINY, compression=bad)


def test_bipartite_matching_on_a_hand_made_example():
    # A = tokens 0, 2, 4, 6 and B = 1, 3, 5. Token 2 points nearly as 5
    # does, token 4 nearly as 1 does, token 6 is far from every B token,
    # and the class token 0 equals token 3 (but is never merged).
    metric = torch.tensor([[[0., 1.], [1., .2], [-1., 1.], [0., 1.],
                            [1., 0.], [-2., 2.2], [1., -1.]]])
    assign, num_slots = bipartite_soft_matching(metric, r=2)
    # slots: unmerged A in order (0 -> 0, 6 -> 1), then B (1, 3, 5 -> 2, 3, 4)
    assert num_slots == 5
    assert assign.tolist() == [[0, 2, 4, 3, 2, 4, 1]]
    x = torch.arange(14.).view(1, 7, 2)
    size = torch.tensor([[1., 1., 2., 1., 3., 1., 1.]])
    merged, new_size = merge_tokens(x, assign, size, num_slots)
    assert new_size.tolist() == [[1., 1., 4., 1., 3.]]
    assert torch.allclose(merged[0, 2], (x[0, 1] + 3 * x[0, 4]) / 4)
    assert torch.allclose(merged[0, 4], (2 * x[0, 2] + x[0, 5]) / 3)
    assert torch.equal(merged[0, [0, 1, 3]], x[0, [0, 6, 3]])
    # without protection the class token merges into its twin, token 3
    assign, _ = bipartite_soft_matching(metric, r=1, num_prefix=0)
    assert assign[0, 0] == assign[0, 3]


def test_proportional_attention_equals_attending_to_copies():
    """A token of size s (bias log s) weighs as s copies of itself."""
    torch.manual_seed(0)
    attn = Attention(8, 2).eval()
    x = torch.randn(1, 4, 8)
    copies = torch.cat((x, x[:, 2:3], x[:, 2:3]), dim=1)  # token 2 three times
    size = torch.tensor([1., 1., 3., 1.])
    with torch.no_grad():
        merged = attn(x, bias=size.log()[None, None, None])
        reference = attn(copies)[:, :4]
        assert (merged - reference).abs().max() <= 1e-5
        attn.probs_hook = lambda probs: None  # explicit softmax path
        assert (attn(x, bias=size.log()[None, None, None]) - merged).abs() \
            .max() <= 1e-5


def test_token_counts_per_layer_and_full_grid_at_every_out_index():
    dense = randomise(tiny_pm(out_indices=ALL))
    x = torch.randn(2, 3, 48, 80)  # 15 patch tokens + the class token
    # a block merges at most half its mergeable tokens: r=5 in every block
    # asks too much of blocks 2 and 3 at img_size, and is refused
    with pytest.raises(ValueError, match=r'r=5 at block 2: the block has 6 '
                       r'tokens.*at most 2'):
        tiny_pm(compression=dict(method='tome', r=5))
    model = tome_from(dense, dict(method='tome', r=[5, 5, 2, 1]),
                      out_indices=ALL)
    # at other input sizes r is capped: 16 -> 11 -> 6 -> 4 -> 3
    assert model.token_merger.tokens_per_block(16, 4) == [11, 6, 4, 3]
    assert model.token_merger.tokens_per_block(12, 4) == [7, 4, 3, 2]
    assert token_counts(model, x) == [16, 11, 11, 6, 6, 4, 4, 3]
    model = tome_from(dense, dict(method='tome', layers=[1, 3], r=[3, 2]),
                      out_indices=ALL)
    assert token_counts(model, x) == [16, 16, 16, 13, 13, 13, 13, 11]
    with torch.no_grad():
        outs = model(x)
    for out, tokens in zip(outs, [16, 13, 13, 11]):
        assert out.shape == (2, 32, 3, 5)
        for image in out.flatten(2).transpose(1, 2):  # members share a token
            assert len(torch.unique(image, dim=0)) == tokens - 1


def test_sizes_follow_the_source_map_into_proportional_attention():
    model = tome_from(randomise(tiny_pm(out_indices=(2, ))),
                      dict(method='tome', layers=[0, 1, 2], r=3),
                      out_indices=(2, ))
    seen = []
    attn = model.layers[3].attn
    forward_qk = attn.forward_qk
    attn.forward_qk = lambda x, bias=None: seen.append(bias) or forward_qk(
        x, bias)
    _, source = source_maps(model, torch.randn(2, 3, 48, 80))
    del attn.forward_qk
    sizes = torch.stack([s.bincount(minlength=7) for s in source]).float()
    assert sizes.shape == (2, 7) and (sizes >= 1).all()
    assert torch.allclose(seen[0], sizes.log()[:, None, None, :])


@pytest.mark.parametrize('with_cls_token', [True, False])
def test_r_zero_equals_the_dense_model(with_cls_token):
    dense = randomise(tiny_pm(out_indices=ALL, with_cls_token=with_cls_token))
    model = tome_from(dense, dict(method='tome', r=0), out_indices=ALL,
                      with_cls_token=with_cls_token)
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        for a, b in zip(dense(x), model(x)):
            assert (a - b).abs().max() <= 1e-5
        merging = tome_from(dense, dict(method='tome', r=2),
                            with_cls_token=with_cls_token)
        with merging.dense_forward():  # the scoring pass's switch
            assert (merging(x)[0] - dense(x)[-1]).abs().max() <= 1e-5
        merging = merging(x)[0]
    assert merging.shape == (2, 32, 3, 5)
    assert not torch.allclose(merging, dense(x)[-1], atol=1e-3)


def test_batch_merges_each_image_its_own_way():
    model = tome_from(randomise(tiny_pm(out_indices=(1, 3))),
                      dict(method='tome', r=3), out_indices=(1, 3))
    assert_each_image_merges_its_own_way(model, torch.randn(3, 3, 48, 80))


def test_gradients_reach_the_backbone_also_with_checkpointing():
    grads = []
    for with_cp in (False, True):
        model = tome_from(randomise(tiny_pm()), dict(method='tome', r=3),
                          with_cp=with_cp)
        model.train()
        model(torch.randn(2, 3, 48, 80, generator=torch.Generator(
        ).manual_seed(0)))[0].square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        assert grad is not None and grad.abs().sum() > 0, name
        assert torch.allclose(grad, grads[1][name], atol=1e-6), name


def test_flops_fall_as_the_token_counts_imply():
    dense = randomise(tiny_pm())
    model = tome_from(dense, dict(method='tome', r=3))
    counts = model.token_merger.tokens_per_block(16, 4)
    assert counts == [13, 10, 7, 4]
    assert_flops_follow_token_counts(dense, model, counts,
                                     torch.randn(2, 3, 48, 80))


def test_configs_build_and_run():
    name = 'tome-segmenter_vit-tiny_mask_synthetic-ade-64x64.py'
    cfg = Config.fromfile(CONFIGS / 'synthetic' / name)
    backbone = MODELS.build(cfg.model.backbone)
    backbone.init_weights()
    assert backbone.token_merger.tokens_per_block(65, 4) == [57, 49, 41, 33]
    with torch.no_grad():
        out = backbone.eval()(torch.randn(2, 3, 64, 64))[0]
    assert out.shape == (2, 64, 8, 8)
    name = 'tome-segmenter_vit-s_mask_8xb1-160k_ade20k-512x512.py'
    cfg = Config.fromfile(CONFIGS / 'segmenter' / name)
    parsed = parse_compression(cfg.model.backbone.compression, 12)
    assert parsed.method == 'tome' and set(parsed.r.values()) == {48}
