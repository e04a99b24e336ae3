"""Expedite's Hourglass (method='hourglass') inside PMVisionTransformer."""
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS
from mmseg.models.backbones import VisionTransformer

import mmseg_pm.models  # noqa: F401
from mmseg_pm.compression.config import parse_compression
from mmseg_pm.compression.hourglass import HourglassConfig
from mmseg_pm.models import PMVisionTransformer
from tests.helpers import (CONFIGS, DENSE_TINY, TINY, build_from_config, randomise,
                           tiny_pm, token_counts)

ALL = (0, 1, 2, 3)
HOURGLASS_TINY = CONFIGS / \
    'synthetic/hourglass-segmenter_vit-tiny_mask_synthetic-ade-64x64.py'


def hourglass_from(dense, **compression):
    model = tiny_pm(compression=dict(method='hourglass', **compression),
                    out_indices=ALL)
    model.load_state_dict(dense.state_dict(), strict=True)
    return model


def test_config_parsing_and_errors():
    config = parse_compression(dict(method='hourglass', alpha=2,
                                    clusters=3), 4)
    assert config == HourglassConfig(alpha=2, clusters=(3, 3))
    assert config.iters == 5 and config.window == 5 and config.k == 20
    for bad, match in [
        (dict(method='hourglass', clusters=3), 'needs alpha='),
        (dict(method='hourglass', alpha=4, clusters=3), 'outside blocks'),
        (dict(method='hourglass', alpha=1, clusters=(2, 0)), 'positive'),
        (dict(method='hourglass', alpha=1, clusters=(1, 2, 3)), r'\(h, w\)'),
        (dict(method='hourglass', alpha=1, clusters=2, window=4), 'odd'),
        (dict(method='hourglass', alpha=1, clusters=2, temperature=0),
         '> 0'),
        (dict(method='hourglass', alpha=1, clusters=2, norm='l1'), 'norm'),
        (dict(method='hourglass', alpha=1, clusters=2, r=3), 'unknown'),
    ]:
        with pytest.raises(ValueError, match=match):
            PMVisionTransformer(**TINY, compression=bad)


@pytest.mark.parametrize('with_cls_token', [True, False])
def test_clusters_as_fine_as_the_grid_give_mmsegs_dense_model(
        with_cls_token):
    cfg = dict(TINY, with_cls_token=with_cls_token, out_indices=ALL)
    oracle = randomise(VisionTransformer(**cfg))
    oracle.eval()
    model = PMVisionTransformer(**cfg, compression=dict(
        method='hourglass', alpha=1, clusters=(3, 5))).eval()
    model.load_state_dict(oracle.state_dict(), strict=True)
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        for e, o in zip(oracle(x), model(x)):
            assert (o - e).abs().max() <= 1e-4
    assert set(token_counts(model, x)) == {15 + with_cls_token}


def test_blocks_from_alpha_run_on_the_clusters_and_outputs_are_full():
    dense = randomise(tiny_pm(out_indices=ALL))
    model = hourglass_from(dense, alpha=2, clusters=(2, 2))
    x = torch.randn(2, 3, 48, 80)
    assert token_counts(model, x) == [16, 16, 16, 16, 5, 5, 5, 5]
    assert model.token_merger.tokens_per_block(16, 4) == [16, 16, 5, 5]
    with torch.no_grad():
        ref, outs = dense(x), model(x)
    for i, (r, o) in enumerate(zip(ref, outs)):
        assert o.shape == r.shape == (2, 32, 3, 5)
        if i < 2:  # before the clustering: the plain tokens
            assert torch.equal(o, r)
        else:
            assert not torch.allclose(o, r, atol=1e-3)
    # each output after alpha is the weighted mix of its cluster tokens:
    # with k=1 and a sharp temperature every token copies one cluster
    model = hourglass_from(dense, alpha=2, clusters=(2, 2), k=1)
    with torch.no_grad():
        out = model(x)[3].flatten(2).transpose(1, 2)
    for image in out:
        assert len(torch.unique(image, dim=0)) <= 4


def test_each_image_clusters_alone():
    model = hourglass_from(randomise(tiny_pm(out_indices=ALL)), alpha=1,
                           clusters=(2, 3))
    x = torch.randn(3, 3, 48, 80)
    with torch.no_grad():
        batch = model(x)
        for b in range(3):
            for o, s in zip(batch, model(x[b:b + 1])):  # float32 rounding
                assert (o[b] - s[0]).abs().max() <= 1e-5 * o.abs().max()


def test_smaller_inputs_cluster_no_finer_than_their_grid():
    model = hourglass_from(randomise(tiny_pm(out_indices=ALL)), alpha=1,
                           clusters=(2, 4))
    x = torch.randn(1, 3, 32, 48)  # a 2 x 3 grid: 2 x 3 clusters at most
    assert token_counts(model, x) == [7] * 8
    x = torch.randn(1, 3, 32, 96)  # 2 x 6: 2 x 4 clusters
    assert token_counts(model, x)[2:] == [9] * 6


def colour_scenes(g, n, colours):
    """Images of 4x4 blocks of 8 colours (+ noise); the label of a pixel is
    its block's colour."""
    labels = torch.randint(0, len(colours), (n, 1, 4, 4), generator=g)
    labels = F.interpolate(labels.float(), size=(64, 64))[:, 0].long()
    noise = 0.1 * torch.randn(n, 3, 64, 64, generator=g)
    return colours[labels].permute(0, 3, 1, 2) + noise, labels


@pytest.fixture(scope='module')
def trained_tiny_segmentor():
    """The tiny synthetic Hourglass Segmenter (8 classes), its dense forward
    trained 20 steps on colour scenes: random weights give near-tied
    logits and chaotic features, where bf16 rounding flips classes in the
    dense model too. One thread (a few seconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = Config.fromfile(str(HOURGLASS_TINY))
    cfg.model.decode_head.num_classes = 8
    init_default_scope('mmseg')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    g = torch.Generator().manual_seed(0)
    colours = torch.rand(8, 3, generator=g) * 2 - 1
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(20):
        x, labels = colour_scenes(g, 8, colours)
        with model.backbone.dense_forward():
            logits = model(x, mode='tensor')  # one logit per 8x8 patch
        loss = F.cross_entropy(logits, labels[:, ::8, ::8])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    yield model.eval(), colours
    torch.set_num_threads(threads)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_bf16_autocast_matches_fp32_on_the_tiny_segmentor(
        trained_tiny_segmentor, seed):
    """bf16 autocast: logits within 2% and >= 99% of the classes the same
    as in fp32 (clustering and reconstruction run in fp32)."""
    model, colours = trained_tiny_segmentor
    x, labels = colour_scenes(torch.Generator().manual_seed(100 + seed), 4,
                              colours)
    with torch.inference_mode():
        ref = model(x, mode='tensor')
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = model(x, mode='tensor')
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    low = low.float()
    assert (low - ref).norm() / ref.norm() < 0.02
    assert (low.argmax(1) == ref.argmax(1)).float().mean() >= 0.99
    # the model learnt the task: a comparison of confident predictions
    assert (ref.argmax(1) == labels[:, ::8, ::8]).float().mean() >= 0.8


def test_synthetic_config_loads_the_dense_checkpoint_layout():
    model = build_from_config(HOURGLASS_TINY)
    dense = build_from_config(DENSE_TINY)
    model.load_state_dict(dense.state_dict(), strict=True)
    reducer = model.backbone.reducer
    assert reducer.method == 'hourglass' and reducer.alpha == 2
    assert reducer.tokens_per_block(65, 4) == [65, 65, 37, 37]


@pytest.mark.parametrize('size,alpha,clusters', [
    ('t', 5, 21), ('s', 5, 21), ('b', 5, 21), ('l', 10, 28)])
def test_ade20k_configs_cut_the_encoder_like_the_authors_vit_l(
        size, alpha, clusters):
    """ViT-L 640 is the authors' setting (before block 10 of 24, 28x28 of
    40x40: 70.0 % of the dense encoder's FLOPs with the clustering and
    reconstruction); T/S/B 512 cut about the same fraction."""
    from mmseg_pm.compression.hourglass import hourglass_flops
    crop = 640 if size == 'l' else 512
    cfg = Config.fromfile(str(
        CONFIGS / 'segmenter' / f'hourglass-segmenter_vit-{size}_mask_'
        f'8xb1-160k_ade20k-{crop}x{crop}.py'))
    b = cfg.model.backbone
    parsed = parse_compression(b.compression, b.num_layers)
    assert (parsed.alpha, parsed.clusters) == (alpha, (clusters, clusters))
    n = (b.img_size[0] // b.patch_size) ** 2
    assert n == (1600 if size == 'l' else 1024)
    fraction = hourglass_flops(alpha, clusters ** 2, n, b.num_layers,
                               b.embed_dims) / \
        hourglass_flops(b.num_layers, 0, n, b.num_layers, b.embed_dims,
                        outputs=0)
    assert abs(fraction - 0.70) <= 0.02
