"""MPM (method='mpm') inside PMVisionTransformer and an mmseg segmentor:
mmseg's own VisionTransformer with the authors' rule inserted (a Python
loop) as the oracle, every image of a batch as it is alone, the full grid
at every output, GFLOPs, configs and their errors."""
import pytest
import torch
from mmengine.config import Config
from mmseg.models.backbones import VisionTransformer

import mmseg_pm.models  # noqa: F401
from mmseg_pm.compression.config import parse_compression
from mmseg_pm.compression.mpm import MPM, MPMConfig
from mmseg_pm.models import PMVisionTransformer
from tests.compression.test_mpm import (reference_full_grid,
                                        reference_insertion)
from tests.helpers import (CONFIGS, DENSE_TINY, TINY, build_from_config,
                           randomise, source_maps, tiny_pm, token_counts)

ALL = (0, 1, 2, 3)
SIZE = (64, 96)  # a 4 x 6 token grid
MPM_TINY = CONFIGS / 'synthetic/mpm-segmenter_vit-tiny_mask_synthetic-ade-64x64.py'  # noqa: E501


def reference_backbone(vit, image, layers):
    """mmseg's VisionTransformer (the dense peer) on one image with the
    authors' rule (tests/compression/test_mpm.py's loop) before the blocks
    of ``layers``: every ``out_indices`` output is the full grid, each
    position taking the value of the token that holds it."""
    x, hw = vit.patch_embed(image)
    x = torch.cat((vit.cls_token, x), dim=1)
    x = vit._pos_embeding(x, hw, vit.pos_embed)
    prefix = int(vit.with_cls_token)
    x = x[:, 1 - prefix:]
    n = hw[0] * hw[1]
    groups, outs = [[p] for p in range(n)], []
    for i, layer in enumerate(vit.layers):
        if i in layers:
            tokens, groups = reference_insertion(list(x[0, prefix:]), groups)
            x = torch.cat((x[:, :prefix], torch.stack(tokens)[None]), dim=1)
        x = layer(x)
        if i == len(vit.layers) - 1 and vit.final_norm:
            x = vit.norm1(x)
        if i in vit.out_indices:
            grid = reference_full_grid(list(x[0, prefix:]), groups, n)
            outs.append(grid.T.reshape(1, -1, *hw))
    return outs, groups


def images(num, size=SIZE, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(num, 3, *size, generator=g)


def peer_and_mpm(layers, with_cls_token=True, size=SIZE, out_indices=ALL):
    cfg = dict(TINY, img_size=size, with_cls_token=with_cls_token,
               out_indices=out_indices)
    torch.manual_seed(0)
    peer = randomise(VisionTransformer(**cfg))
    peer.eval()  # mmseg's train() returns None
    model = PMVisionTransformer(**cfg, compression=dict(
        method='mpm', layers=layers)).eval()
    model.load_state_dict(peer.state_dict(), strict=True)
    model.reducer.trace_counts = True  # the tests read last_counts
    return peer, model


# ------------------------------------------------------------- oracle
@pytest.mark.parametrize('with_cls_token', [True, False])
@pytest.mark.parametrize('layers', [(1, 2), (0, 3)])
def test_backbone_is_mmseg_vit_with_the_authors_rule(layers,
                                                     with_cls_token):
    peer, model = peer_and_mpm(layers, with_cls_token)
    x = images(2)
    with torch.no_grad():
        for b in range(2):
            expected, groups = reference_backbone(peer, x[b:b + 1], layers)
            outs, source = source_maps(model, x[b:b + 1])
            assert len(outs) == len(expected) == 4
            for o, e in zip(outs, expected):
                assert o.shape == e.shape == (1, 32, 4, 6)
                assert (o - e).abs().max() <= 1e-4
            prefix = int(with_cls_token)
            owner = {p: k for k, g in enumerate(groups) for p in g}
            assert source[0, prefix:].tolist() == [
                prefix + owner[p] for p in range(24)]
            assert model.reducer.last_counts[0, -1] == prefix + len(groups)


def test_bypass_is_the_dense_peer():
    peer, model = peer_and_mpm((1, 2))
    x = images(2)
    with torch.no_grad(), model.dense_forward():
        for o, e in zip(model(x), peer(x)):
            assert (o - e).abs().max() <= 1e-4
    with torch.no_grad():
        assert not torch.allclose(model(x)[-1], peer(x)[-1], atol=1e-3)


# ------------------------------------------------------------- batches
def test_a_batch_gives_each_image_what_it_gives_alone():
    _, model = peer_and_mpm((1, 2), out_indices=(1, 3))
    x = images(4, seed=1)
    outs, source = source_maps(model, x)
    counts = model.reducer.last_counts
    assert len(set(counts[:, -1].tolist())) > 1  # the batch is padded
    # the bound without an image; what the images kept is measured
    assert model.reducer.tokens_per_block(25, 4) == [25] * 4
    for b in range(4):
        single, single_source = source_maps(model, x[b:b + 1])
        assert torch.equal(single_source[0], source[b])
        assert torch.equal(model.reducer.last_counts[0], counts[b])
        for o, s in zip(outs, single):
            assert (o[b] - s[0]).abs().max() <= 1e-5


def test_token_counts_and_the_full_grid_at_every_output():
    _, model = peer_and_mpm((1, 2))
    x = images(1, seed=2)
    seen = token_counts(model, x)
    counts = model.reducer.last_counts[0].tolist()
    assert seen == [c for c in counts for _ in (0, 1)]
    assert counts[0] == 25 and 25 > counts[1] > counts[2] == counts[3]
    assert counts[1] >= 1 + 12 and counts[2] >= 1 + (counts[1] - 1 + 1) // 2
    outs, _ = source_maps(model, x)
    for out, tokens in zip(outs, counts):
        assert out.shape == (1, 32, 4, 6)
        image = out[0].flatten(1).T
        assert len(torch.unique(image, dim=0)) == tokens - 1
    assert model.reducer.blocks(4) == [1, 2, 3]
    assert model.reducer.merging_blocks() == [1, 2]


def test_bf16_autocast_runs_on_a_padded_batch():
    """Under bf16 autocast the similarities stay fp32 and the padded keys
    are masked: finite logits close to fp32's."""
    model = randomise(build_from_config(MPM_TINY)).eval()
    reducer = model.backbone.reducer
    reducer.trace_counts = True
    x = images(3, (64, 64), seed=3)
    with torch.inference_mode():
        ref = model(x, mode='tensor')
        counts = reducer.last_counts
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = model(x, mode='tensor')
    assert len(set(counts[:, -1].tolist())) > 1
    assert torch.isfinite(low).all()
    assert (low.float() - ref).norm() / ref.norm() < 0.05


# ------------------------------------------------------------- segmentor
def test_segmentor_is_the_dense_segmentor_with_the_authors_rule():
    """The synthetic MPM config's EncoderDecoder on a batch: per image, the
    dense config's own mmseg modules with the authors' rule inserted, then
    the dense mask-transformer head on the full grid."""
    dense = randomise(build_from_config(DENSE_TINY)).eval()
    model = build_from_config(MPM_TINY).eval()
    model.load_state_dict(dense.state_dict(), strict=True)
    assert isinstance(model.backbone.reducer, MPM)
    assert model.backbone.reducer.layers == (1, 2)
    model.backbone.reducer.trace_counts = True
    x = images(2, (64, 64), seed=4)
    with torch.no_grad():
        logits = model(x, mode='tensor')
        assert len(set(model.backbone.reducer.last_counts[:, -1].tolist())) \
            > 1
        for b in range(2):
            feats, _ = reference_backbone(dense.backbone, x[b:b + 1], (1, 2))
            expected = dense.decode_head(feats)
            assert logits[b:b + 1].shape == expected.shape
            assert (logits[b:b + 1] - expected).abs().max() <= 1e-4
        assert not torch.allclose(logits, dense(x, mode='tensor'),
                                  atol=1e-3)


# ------------------------------------------------------------- flops
def test_flops_count_the_blocks_on_their_tokens_and_the_merges():
    """At batch 1, the counted FLOPs are the blocks on the tokens they ran
    on plus MPM's own work: every insertion's N x N similarity matrix and
    its two segment sums (the plain means)."""
    from mmseg_pm.utils.flops import count_flops
    from tests.helpers import block_flops

    model = randomise(tiny_pm(compression=dict(method='mpm',
                                               layers=(1, 2))))
    model.reducer.trace_counts = True
    x = images(1, (48, 80), seed=5)
    flops = count_flops(model, x)
    counts = model.reducer.last_counts[0].tolist()
    assert counts[0] == 16 and counts[1] < 16 and counts[2] < counts[1]
    c = TINY['embed_dims']
    blocks = block_flops(counts, counts, c, 1)
    merges = sum(2 * n * n * c + 2 * n * (c + 1)
                 for n in (counts[0] - 1, counts[1] - 1))
    embed = count_flops(tiny_pm(), x) - block_flops([16] * 4, [16] * 4, c, 1)
    assert flops == embed + blocks + merges
    assert model.reducer.merge_flops((3, 5), c, (3, )) is None


# ------------------------------------------------------------- configs
def test_config_defaults_and_errors():
    parsed = parse_compression(dict(method='mpm'), 12)
    assert isinstance(parsed, MPMConfig) and parsed.layers == (2, 5)
    assert parse_compression(dict(method='mpm', layers=[5, 0]),
                             12).layers == (0, 5)
    for bad, match in [
        (dict(method='mpm'), r'default but the backbone has 4 blocks'),
        (dict(method='mpm', layers=[1, 4]), r'outside blocks 0\.\.3'),
        (dict(method='mpm', layers=[-1]), r'outside blocks 0\.\.3'),
        (dict(method='mpm', layers=[1, 1]), 'lists a block twice'),
        (dict(method='mpm', layers=[]), 'non-empty list'),
        (dict(method='mpm', layers=2), 'non-empty list'),
        (dict(method='mpm', layers=[1.5]), 'integer block indices'),
        (dict(method='mpm', layers=[True]), 'integer block indices'),
        (dict(method='mpm', layers=[1], keep_rate=0.5),
         'unknown compression keys'),
        (dict(method='mmp'), "must be one of .*'mpm'"),
    ]:
        with pytest.raises(ValueError, match=match):
            PMVisionTransformer(**TINY, compression=bad)


@pytest.mark.parametrize('arch', ['t', 's', 'b', 'l'])
def test_ade20k_configs_take_the_authors_layers(arch):
    size = 640 if arch == 'l' else 512
    name = f'mpm-segmenter_vit-{arch}_mask_8xb1-160k_ade20k-{size}x{size}.py'
    cfg = Config.fromfile(str(CONFIGS / 'segmenter' / name))
    # ALGM's config of the same model inherits the same mmseg config
    peer = Config.fromfile(str(CONFIGS / 'segmenter' / name.replace(
        'mpm-', 'algm-')))
    b = cfg.model.backbone
    assert b.type == 'PMVisionTransformer'
    assert {k: v for k, v in b.items() if k != 'compression'} == \
        {k: v for k, v in peer.model.backbone.items() if k != 'compression'}
    assert cfg.model.decode_head == peer.model.decode_head
    assert cfg.train_dataloader == peer.train_dataloader
    assert tuple(b.img_size) == (size, size) == tuple(cfg.crop_size)
    parsed = parse_compression(b.compression, b.num_layers)
    assert parsed.layers == (2, 5)
    reducer = parsed.build_reducer((size // 16, size // 16), b.embed_dims,
                                   1, b.img_size)
    assert isinstance(reducer, MPM) and reducer.merging_blocks() == [2, 5]
    assert reducer.blocks(b.num_layers) == list(range(2, b.num_layers))


def test_onnx_export_refuses_input_dependent_shapes(tmp_path):
    from mmseg_pm.utils.errors import UsageError
    from mmseg_pm.export import export_module

    model = tiny_pm(compression=dict(method='mpm', layers=(1, 2)))
    with pytest.raises(UsageError, match="method='mpm' cannot be exported "
                       'to ONNX: each image keeps its own number'):
        export_module(model, torch.zeros(1, 3, 48, 80), tmp_path / 'a.onnx')
    assert list(tmp_path.iterdir()) == []
