"""Weights in: timm ViT and Segmenter (+ Prune-and-Merge matrices)
checkpoints converted by the tools and loaded into this project's models.

Oracles: timm's own ViT (features), and for Segmenter a model assembled from
timm's ViT and timm Blocks under Segmenter's parameter names, run the way the
Segmenter paper and the Prune-and-Merge authors' dense formulation describe
(x_res = pruned tokens; x = M x; block; x = R x + x_res).
"""

import pytest
import torch
import torch.nn.functional as F
from mmseg.models.backbones import VisionTransformer
from mmseg.registry import MODELS
from safetensors.torch import save_file
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import Block
from timm.models.vision_transformer import \
    VisionTransformer as TimmVisionTransformer
from torch import nn

import mmseg_pm.models  # noqa: F401
from mmseg_pm.compression import build_structure, reconstruct_weights
from mmseg_pm.converters import (ConversionError, convert_decoder,
                                 convert_timm_vit,
                                 structure_from_matrices)
from mmseg_pm.models import PMVisionTransformer


from mmseg_pm.cli import segmenter2mmseg_pm, timm2mmseg_pm  # noqa: E402


def randomise(module, seed=0):
    """Non-trivial values everywhere (norms included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 0.2 if p.ndim > 1 or 'norm' not in name else 0.1
            p.copy_(torch.randn(p.shape, generator=g) * scale +
                    (1.0 if 'norm' in name and name.endswith('weight')
                     else 0.0))
    return module.eval()


# ---------------------------------------------------------------------------
# timm
def tiny_timm_vit(**kwargs):
    cfg = dict(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2,
               num_classes=10)
    cfg.update(kwargs)
    return randomise(TimmVisionTransformer(**cfg))


def ours_from(checkpoint, cls=PMVisionTransformer, **kwargs):
    cfg = dict(img_size=64, patch_size=16, embed_dims=32, num_layers=2,
               num_heads=2, final_norm=True, patch_bias=True,
               norm_cfg=dict(type='LN', eps=1e-6),
               init_cfg=dict(type='Pretrained', checkpoint=str(checkpoint)))
    cfg.update(kwargs)
    model = cls(**cfg)
    model.init_weights()
    model.eval()  # mmseg's VisionTransformer.train() returns None
    return model


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_timm_vit_features_match_after_config_level_init(tmp_path, suffix,
                                                          capsys):
    timm_model = tiny_timm_vit()
    src = tmp_path / f'timm_vit{suffix}'
    if suffix == '.safetensors':
        save_file(timm_model.state_dict(), str(src))
    else:
        torch.save(timm_model.state_dict(), src)
    dst = tmp_path / 'converted.pth'
    timm2mmseg_pm.main([str(src), str(dst)])
    out = capsys.readouterr().out
    assert 'dropped the classification head' in out
    assert 'patch_bias=True' in out

    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = timm_model.forward_features(x)[:, 1:]  # after its norm
        expected = expected.reshape(2, 4, 4, 32).permute(0, 3, 1, 2)
        for cls in (PMVisionTransformer, VisionTransformer):
            (got, ) = ours_from(dst, cls)(x)
            assert got.shape == expected.shape
            assert (got - expected).abs().max().item() <= 1e-4

    # a compressed backbone initialises from the same file (structures keep
    # their built-in lattice) and runs
    pm = ours_from(dst, compression=dict(mode='layer', layers=[1],
                                         keep_rate=0.5))
    with torch.no_grad():
        assert pm(x)[0].shape == expected.shape
    state = torch.load(dst, weights_only=True)
    assert state['meta']['format'] == 'timm_vit'
    assert set(state['state_dict']) == {
        k for k in ours_from(dst).state_dict()}


def test_timm_converter_refuses_unknown_and_missing_keys(tmp_path):
    state = tiny_timm_vit().state_dict()
    layer_scale = dict(state, **{'blocks.0.ls1.gamma': torch.ones(32)})
    with pytest.raises(ConversionError, match=r'blocks\.0\.ls1\.gamma'):
        convert_timm_vit(layer_scale)
    incomplete = {k: v for k, v in state.items()
                  if k != 'blocks.1.mlp.fc2.weight'}
    with pytest.raises(ConversionError, match=r'blocks\.1\.mlp\.fc2\.weight'):
        convert_timm_vit(incomplete)
    # the tool writes nothing when it refuses, and never overwrites its input
    src = tmp_path / 'bad.pth'
    torch.save(layer_scale, src)
    with pytest.raises(SystemExit, match='ls1.gamma'):
        timm2mmseg_pm.main([str(src), str(tmp_path / 'out.pth')])
    assert sorted(p.name for p in tmp_path.iterdir()) == ['bad.pth']
    with pytest.raises(SystemExit, match='input checkpoint'):
        timm2mmseg_pm.main([str(src), str(src)])


def test_deit_distillation_token_is_refused_or_dropped(tmp_path):
    deit = randomise(VisionTransformerDistilled(
        img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2))
    state = {'model': deit.state_dict()}  # DeiT's container
    src = tmp_path / 'deit.pth'
    torch.save(state, src)
    dst = tmp_path / 'deit_mmseg.pth'
    with pytest.raises(SystemExit, match='dist_token'):
        timm2mmseg_pm.main([str(src), str(dst)])
    assert not dst.exists()
    timm2mmseg_pm.main([str(src), str(dst), '--drop-dist-token'])
    converted = torch.load(dst, weights_only=True)['state_dict']
    pos = deit.state_dict()['pos_embed']
    assert torch.equal(converted['pos_embed'],
                       torch.cat((pos[:, :1], pos[:, 2:]), dim=1))
    model = ours_from(dst)
    assert torch.equal(model.cls_token, deit.cls_token)


# ---------------------------------------------------------------------------
# Segmenter (+ Prune and Merge)
GRID = (3, 5)
IMG = (48, 80)
NUM_CLASSES = 7


class SegmenterMaskDecoder(nn.Module):
    """Segmenter's mask transformer under its parameter names, on timm
    Blocks (which carry the same names as Segmenter's blocks)."""

    def __init__(self, dim=32, heads=2, layers=2, num_classes=NUM_CLASSES):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, qkv_bias=True,
                                          norm_layer=nn.LayerNorm)
                                    for _ in range(layers))
        self.cls_emb = nn.Parameter(torch.zeros(1, num_classes, dim))
        self.proj_dec = nn.Linear(dim, dim)
        self.proj_patch = nn.Parameter(torch.zeros(dim, dim))
        self.proj_classes = nn.Parameter(torch.zeros(dim, dim))
        self.decoder_norm = nn.LayerNorm(dim)
        self.mask_norm = nn.LayerNorm(num_classes)

    def forward(self, x, grid):
        n = self.cls_emb.shape[1]
        x = torch.cat((self.proj_dec(x),
                       self.cls_emb.expand(x.shape[0], -1, -1)), dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.decoder_norm(x)
        patches = F.normalize(x[:, :-n] @ self.proj_patch, dim=-1)
        classes = F.normalize(x[:, -n:] @ self.proj_classes, dim=-1)
        masks = self.mask_norm(patches @ classes.transpose(1, 2))
        return masks.transpose(1, 2).reshape(x.shape[0], n, *grid)


def pm_structure(seed, rule='row'):
    n = GRID[0] * GRID[1]
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    centres, pruned = order[:5], order[5:8]
    scores = torch.rand(n, generator=g) + 0.1
    scores[centres] += 1.0
    return build_structure(GRID, centres, pruned, scores, rule)


def authors_matrices(structure, reconstruct_weight, seed):
    """M (K+1, N+1), R (N+1, K+1), mask (N+1) as the authors' code holds
    them; windows in a shuffled row order (theirs need not be ours)."""
    n, k = structure.num_tokens, structure.num_groups
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
    m = torch.zeros(k + 1, n + 1)
    r = torch.zeros(n + 1, k + 1)
    m[0, 0] = r[0, 0] = 1
    for p in range(n):
        g = int(structure.group[p])
        if g >= 0:
            m[1 + perm[g], 1 + p] = structure.weight[p]
            r[1 + p, 1 + perm[g]] = reconstruct_weight[p]
    mask = torch.ones(n + 1)
    mask[1:][structure.pruned] = 0
    return m, r, mask


def segmenter_reference(encoder, decoder, units, x):
    """Segmenter forward with the authors' dense merge/reconstruct."""
    t = encoder.patch_embed(x)
    t = torch.cat((encoder.cls_token.expand(x.shape[0], -1, -1), t), dim=1)
    t = t + encoder.pos_embed
    starts = {first: (m, mask) for (first, _), (m, _, mask) in units.items()}
    ends = {last: r for (_, last), (_, r, _) in units.items()}
    residual = None
    for i, block in enumerate(encoder.blocks):
        if i in starts:
            m, mask = starts[i]
            residual = t * (1 - mask)[None, :, None]
            t = m @ t
        t = block(t)
        if i in ends:
            t = ends[i] @ t + residual
    t = encoder.norm(t)[:, 1:]
    return decoder(t, GRID)


def mmseg_segmenter(compression):
    cfg = dict(
        type='EncoderDecoder',
        backbone=dict(
            type='PMVisionTransformer', img_size=IMG, patch_size=16,
            embed_dims=32, num_layers=4, num_heads=2, final_norm=True,
            patch_bias=True, norm_cfg=dict(type='LN', eps=1e-5),
            compression=compression),
        decode_head=dict(
            type='SegmenterMaskTransformerHead', in_channels=32, channels=32,
            num_classes=NUM_CLASSES, num_layers=2, num_heads=2,
            embed_dims=32, dropout_ratio=0.0, drop_path_rate=0.0,
            loss_decode=dict(type='CrossEntropyLoss')))
    return MODELS.build(cfg).eval()


@pytest.mark.parametrize('with_pm', [True, False])
def test_segmenter_checkpoint_matches_reference(tmp_path, with_pm, capsys):
    torch.manual_seed(0)
    encoder = randomise(TimmVisionTransformer(
        img_size=IMG, patch_size=16, embed_dim=32, depth=4, num_heads=2,
        num_classes=NUM_CLASSES, norm_layer=nn.LayerNorm), seed=1)
    decoder = randomise(SegmenterMaskDecoder(), seed=2)
    state = {f'encoder.{k}': v for k, v in encoder.state_dict().items()}
    state.update({f'decoder.{k}': v for k, v in decoder.state_dict().items()})

    structures, units = [], {}
    if with_pm:
        for seed, (first, last), rule in ((3, (1, 1), 'row'),
                                          (4, (2, 3), 'nearest')):
            s = pm_structure(seed, rule)
            rec = reconstruct_weights(s.group, s.weight, s.num_groups)
            rec = rec * (1 + 0.3 * torch.rand(rec.shape))  # "fine-tuned"
            m, r, mask = authors_matrices(s, rec, seed)
            state[f'encoder.blocks.{first}.merge_matrix'] = m
            state[f'encoder.blocks.{first}.token_mask'] = mask
            state[f'encoder.blocks.{last}.reconstruct_matrix'] = r
            structures.append((s, rec))
            units[(first, last)] = (m, r, mask)
    src = tmp_path / 'checkpoint.pth'
    torch.save(dict(model=state, n_cls=NUM_CLASSES, epoch=3), src)
    dst = tmp_path / 'converted.pth'
    args = [str(src), str(dst)] + (['--grid', '3', '5'] if with_pm else [])
    compression = segmenter2mmseg_pm.main(args)
    out = capsys.readouterr().out
    assert "eps=1e-5" in out

    if with_pm:
        assert compression == dict(mode='span', spans=[(1, 1), (2, 3)],
                                   reconstruct='pinv', assign='static')
    else:
        assert compression is None
    model = mmseg_segmenter(compression)
    converted = torch.load(dst, weights_only=True)
    model.load_state_dict(converted['state_dict'], strict=True)
    for (expected, rec), got, compressor in zip(
            structures, model.backbone.structures(),
            (model.backbone.reducer or {}).values()):
        assert torch.equal(got.group, expected.group)
        assert torch.equal(got.centre, expected.centre)
        assert torch.allclose(got.weight, expected.weight)
        assert torch.allclose(compressor.reconstruct_weight.detach(), rec)

    x = torch.randn(2, 3, *IMG)
    with torch.no_grad():
        expected = segmenter_reference(encoder, decoder, units, x)
        got = model(x, mode='tensor')
    assert got.shape == expected.shape == (2, NUM_CLASSES, *GRID)
    assert (got - expected).abs().max().item() <= 1e-4


def test_structure_from_matrices_refuses_what_it_cannot_represent():
    s = pm_structure(5)
    rec = reconstruct_weights(s.group, s.weight, s.num_groups)
    m, r, mask = authors_matrices(s, rec, 0)
    got, got_rec = structure_from_matrices(m, r, mask, GRID)
    assert torch.equal(got.group, s.group) and torch.allclose(got_rec, rec)
    # the token mask may be left out: zero columns are the pruned tokens
    assert torch.equal(structure_from_matrices(m, r, None, GRID)[0].group,
                       s.group)

    kept = torch.nonzero(~s.pruned).flatten()
    soft = m.clone()
    soft[1:, 1 + kept[0]] = 0.5  # a token spread over every window
    with pytest.raises(ConversionError, match='one non-zero per column'):
        structure_from_matrices(soft, r, mask, GRID)
    scaled_cls = m.clone()
    scaled_cls[0, 0] = 0.5
    with pytest.raises(ConversionError, match='class token'):
        structure_from_matrices(scaled_cls, r, mask, GRID)
    stray = r.clone()
    own = int(torch.nonzero(r[1 + kept[0]]).flatten()[0])
    stray[1 + kept[0], 1 + own % s.num_groups] = 0.1  # another window
    with pytest.raises(ConversionError, match='not merged into'):
        structure_from_matrices(m, stray, mask, GRID)
    with pytest.raises(ConversionError, match=r'\(K\+1, 17\) for a 4x4 grid'):
        structure_from_matrices(m, r, mask, (4, 4))


def test_segmenter_tool_refuses_bad_matrices_without_writing(tmp_path):
    s = pm_structure(6)
    rec = reconstruct_weights(s.group, s.weight, s.num_groups)
    m, r, mask = authors_matrices(s, rec, 0)
    m[1:, 1 + int(torch.nonzero(~s.pruned)[0])] = 0.5
    encoder = TimmVisionTransformer(img_size=IMG, patch_size=16,
                                    embed_dim=32, depth=1, num_heads=2)
    state = {f'encoder.{k}': v for k, v in encoder.state_dict().items()}
    state.update({'encoder.blocks.0.merge_matrix': m,
                  'encoder.blocks.0.reconstruct_matrix': r})
    src = tmp_path / 'checkpoint.pth'
    torch.save(dict(model=state), src)
    with pytest.raises(SystemExit, match='not a square grid'):
        segmenter2mmseg_pm.main([str(src), str(tmp_path / 'a.pth')])
    with pytest.raises(SystemExit, match='one non-zero per column'):
        segmenter2mmseg_pm.main([str(src), str(tmp_path / 'a.pth'),
                                 '--grid', '3', '5'])
    del state['encoder.blocks.0.reconstruct_matrix']
    torch.save(dict(model=state), src)
    with pytest.raises(SystemExit, match='--derive-reconstruct'):
        segmenter2mmseg_pm.main([str(src), str(tmp_path / 'a.pth'),
                                 '--grid', '3', '5'])
    assert sorted(p.name for p in tmp_path.iterdir()) == ['checkpoint.pth']


def test_segmenter_linear_decoder_becomes_an_fcn_head():
    linear = randomise(nn.Linear(32, NUM_CLASSES), seed=3)
    head, kind = convert_decoder({f'head.{k}': v
                                  for k, v in linear.state_dict().items()})
    assert kind == 'linear'
    fcn = MODELS.build(dict(
        type='FCNHead', in_channels=32, channels=32, num_convs=0,
        kernel_size=1, concat_input=False, num_classes=NUM_CLASSES,
        dropout_ratio=0.0)).eval()
    fcn.load_state_dict(head, strict=True)
    tokens = torch.randn(2, 32, *GRID)
    with torch.no_grad():
        expected = linear(tokens.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        assert (fcn([tokens]) - expected).abs().max().item() <= 1e-5
