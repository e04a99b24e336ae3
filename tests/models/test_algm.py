"""ALGM (method='algm') inside PMVisionTransformer: both merges against a
straightforward reading of the authors' formulas, the dense model when
nothing merges, per-image counts in a batch, and bf16 autocast."""
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmseg.models.backbones import VisionTransformer

import mmseg_pm.models  # noqa: F401
from mmseg_pm.compression.algm import ALGM, ALGMState
from mmseg_pm.compression.config import parse_compression
from mmseg_pm.models import PMVisionTransformer
from tests.helpers import CONFIGS, TINY, build_from_config, randomise, \
    source_maps, tiny_pm, token_counts

ALL = (0, 1, 2, 3)


class Identity:
    """A block whose attention and MLP add nothing: run_block then returns
    exactly what the merge made."""

    def attention_residual(self, x, bias=None):
        return x, None, None

    def mlp_residual(self, x):
        return x


def cos(a, b):
    return float(F.cosine_similarity(a, b, dim=0))


# ------------------------------------------------------------- references
def reference_local(x, hw, threshold):
    """The authors' local merge read literally, one image: (T, C) tokens
    with the class token first -> tokens, sizes, source map."""
    h, w = hw
    cls, patches = x[0], x[1:]
    windows = []
    for gy in range(h // 2):
        for gx in range(w // 2):
            members = [(2 * gy + dy) * w + 2 * gx + dx
                       for dy in (0, 1) for dx in (0, 1)]
            pairs = [cos(patches[i], patches[j]) for i in members
                     for j in members if i != j]
            windows.append((sum(pairs) / len(pairs), members))
    merged = sorted([s_m for s_m in windows if s_m[0] >= threshold],
                    key=lambda s_m: -s_m[0])
    in_merged = {i for _, members in merged for i in members}
    alone = [i for i in range(h * w) if i not in in_merged]
    tokens = [cls] + [patches[m].mean(0) for _, m in merged] + \
        [patches[i] for i in alone]
    sizes = [1.] + [4.] * len(merged) + [1.] * len(alone)
    source = [0] * (1 + h * w)
    for slot, (_, members) in enumerate(merged, 1):
        for i in members:
            source[1 + i] = slot
    for slot, i in enumerate(alone, 1 + len(merged)):
        source[1 + i] = slot
    return torch.stack(tokens), torch.tensor(sizes), torch.tensor(source)


def reference_global(x, size, layer):
    """The authors' global merge read literally, one image: ToMe's A/B
    split, every A token (not the class token) whose best edge scores
    >= mean + std / layer of the best edges merges into its B match."""
    t = x.shape[0]
    a, b = list(range(0, t, 2)), list(range(1, t, 2))
    best = {}
    for i in a[1:]:
        scores = [cos(x[i], x[j]) for j in b]
        best[i] = (max(scores), b[scores.index(max(scores))])
    values = torch.tensor([s for s, _ in best.values()])
    threshold = values.mean() + values.std() / layer
    merged = {i: j for i, (s, j) in best.items() if s >= threshold}
    kept = [i for i in a if i not in merged]
    slot = {i: n for n, i in enumerate(kept)}
    slot.update({j: len(kept) + n for n, j in enumerate(b)})
    slot.update({i: slot[j] for i, j in merged.items()})
    groups = {}
    for i in range(t):
        groups.setdefault(slot[i], []).append(i)
    tokens, sizes = [], []
    for s in range(len(groups)):
        members = groups[s]
        weight = size[members]
        tokens.append((x[members] * weight[:, None]).sum(0) / weight.sum())
        sizes.append(weight.sum())
    return (torch.stack(tokens), torch.stack(sizes),
            torch.tensor([slot[i] for i in range(t)]), len(merged))


def clustered_features(hw, num_similar, seed=0, channels=16):
    """Patch tokens whose first ``num_similar`` 2x2 windows hold four
    near-copies of one vector (the rest random), class token first."""
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    patches = torch.randn(h * w, channels, generator=g)
    windows = [[(2 * gy + dy) * w + 2 * gx + dx for dy in (0, 1)
                for dx in (0, 1)] for gy in range(h // 2)
               for gx in range(w // 2)]
    for members in windows[:num_similar]:
        patches[members] = torch.randn(channels, generator=g) + \
            0.3 * torch.randn(4, channels, generator=g)
    return torch.cat((torch.randn(1, channels, generator=g), patches))


# ------------------------------------------------------------- oracles
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_local_merge_equals_the_authors_formula(seed):
    hw = (4, 6)
    x = clustered_features(hw, num_similar=3 + seed, seed=seed)
    tokens, sizes, source = reference_local(x, hw, threshold=0.6)
    assert 1 <= (sizes == 4).sum() < 6  # some windows merge, not all
    reducer = ALGM(local_layer=0, global_layer=None, threshold=0.6)
    state = reducer.start(x[None], hw)
    out, state = reducer.run_block(0, Identity(), x[None], state)
    assert torch.equal(state.size[0], sizes)
    assert torch.equal(state.source[0], source)
    assert torch.allclose(out[0], tokens, atol=1e-6)


@pytest.mark.parametrize('layer', [2, 5])
def test_global_merge_equals_the_authors_formula(layer):
    g = torch.Generator().manual_seed(layer)
    x = torch.randn(1, 23, 8, generator=g)
    size = torch.randint(1, 5, (1, 23), generator=g).float()
    tokens, sizes, slots, r = reference_global(x[0], size[0], layer)
    assert 0 < r < 11
    reducer = ALGM(local_layer=0, global_layer=layer - 1)
    state = ALGMState(torch.arange(23)[None], size, (1, 22))
    out, state = reducer.run_block(layer - 1, Identity(), x, state)
    assert out.shape == (1, 23 - r, 8)
    assert torch.equal(state.source[0], slots)
    assert torch.equal(state.size[0], sizes)
    assert torch.allclose(out[0], tokens, atol=1e-6)


def test_padding_never_enters_the_global_merge():
    """Image 0 of a padded batch merges as it does alone."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 23, 8, generator=g)
    size = torch.ones(2, 23)
    size[0, 17:] = 0  # image 0 has 17 tokens, then padding
    x[0, 17:] = 0
    reducer = ALGM(local_layer=0, global_layer=2)
    state = ALGMState(torch.arange(17).expand(2, -1), size, (1, 16))
    out, batched = reducer.run_block(2, Identity(), x, state)
    alone = ALGMState(torch.arange(17)[None], size[:1, :17], (1, 16))
    single, alone = reducer.run_block(2, Identity(), x[:1, :17], alone)
    n = single.shape[1]
    assert torch.equal(batched.source[0], alone.source[0])
    assert torch.equal(batched.size[0, :n], alone.size[0])
    assert (batched.size[0, n:] == 0).all()
    assert torch.allclose(out[0, :n], single[0], atol=1e-6)
    assert (out[0, n:] == 0).all()


# ------------------------------------------------------------- backbone
def algm_from(dense, compression, **kwargs):
    model = tiny_pm(compression=compression, **kwargs)
    model.load_state_dict(dense.state_dict(), strict=True)
    model.reducer.trace_counts = True  # the tests read last_counts
    return model


@pytest.mark.parametrize('with_cls_token', [True, False])
def test_threshold_one_without_global_merge_is_the_dense_model(
        with_cls_token):
    cfg = dict(TINY, with_cls_token=with_cls_token, out_indices=ALL)
    oracle = randomise(VisionTransformer(**cfg))
    oracle.eval()
    model = PMVisionTransformer(**cfg, compression=dict(
        method='algm', threshold=1.0, global_layer=None)).eval()
    model.load_state_dict(oracle.state_dict(), strict=True)
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        for e, o in zip(oracle(x), model(x)):
            assert (o - e).abs().max() <= 1e-4
        merging = algm_from(model, dict(method='algm', threshold=-1.0,
                                        global_layer=2),
                            with_cls_token=with_cls_token, out_indices=ALL)
        assert not torch.allclose(merging(x)[-1], oracle(x)[-1], atol=1e-3)


def varied_images(num, size=(64, 96)):
    """Images with 0, 1, 2, ... flat 32 x 32 cells: their tokens are alike,
    so each image merges a different number of windows."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(num, 3, *size, generator=g)
    for b in range(num):
        for cell in range(b):
            r, c = divmod(cell, size[1] // 32)
            x[b, :, 32 * r:32 * r + 32, 32 * c:32 * c + 32] = 0.5
    return x


def test_a_batch_gives_each_image_what_it_gives_alone():
    size = (64, 96)  # 4 x 6 tokens, six 2x2 windows
    dense = randomise(tiny_pm(out_indices=(1, 3), img_size=size))
    model = algm_from(dense, dict(method='algm', threshold=0.5,
                                  global_layer=2),
                      out_indices=(1, 3), img_size=size)
    x = varied_images(4, size)
    outs, source = source_maps(model, x)
    counts = model.reducer.last_counts
    assert len(set(counts[:, -1].tolist())) == 4  # four different counts
    # counts depend on the image: without one, the most each block can run
    # on (nothing is known to be merged), whatever ran before
    assert model.reducer.tokens_per_block(25, 4) == [25] * 4
    for b in range(4):
        single, single_source = source_maps(model, x[b:b + 1])
        assert torch.equal(single_source[0], source[b])
        assert torch.equal(model.reducer.last_counts[0], counts[b])
        for o, s in zip(outs, single):
            assert (o[b] - s[0]).abs().max() <= 1e-5


@pytest.mark.parametrize('proportional_attention', [False, True])
def test_token_counts_full_grid_and_sizes(proportional_attention):
    size = (64, 96)
    model = algm_from(randomise(tiny_pm(img_size=size, out_indices=ALL)),
                      dict(method='algm', threshold=0.5, global_layer=2,
                           proportional_attention=proportional_attention),
                      img_size=size, out_indices=ALL)
    x = varied_images(4, size)[3:]  # three flat cells
    seen = token_counts(model, x)
    counts = model.reducer.last_counts[0].tolist()
    assert seen == [25, counts[0], counts[0], counts[1], counts[1],
                    counts[2], counts[2], counts[3]]
    assert counts[0] < 25 and counts[2] < counts[1]
    outs, source = source_maps(model, x)
    for out, tokens in zip(outs, counts):
        assert out.shape == (1, 32, 4, 6)
        image = out[0].flatten(1).T
        assert len(torch.unique(image, dim=0)) == tokens - 1


def test_bf16_autocast_matches_fp32():
    """Similarities and matching run in fp32 under autocast: every image
    keeps as many tokens, and the logits stay within 2% (99% of the pixels keep
    their class; the dense model itself keeps 98.4% here)."""
    model = randomise(build_from_config(
        CONFIGS / 'synthetic' /
        'algm-segmenter_vit-tiny_mask_synthetic-ade-64x64.py')).eval()
    reducer = model.backbone.reducer
    reducer.trace_counts = True
    x = varied_images(4, (64, 64))
    with torch.inference_mode():
        ref = model(x, mode='tensor')
        counts = reducer.last_counts
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = model(x, mode='tensor')
    assert (counts[:, -1] < 65).all() and len(set(counts[:, -1].tolist())) > 1
    assert torch.equal(reducer.last_counts, counts)
    assert torch.isfinite(low).all()
    assert (low.float() - ref).norm() / ref.norm() < 0.02
    agree = (low.float().argmax(1) == ref.argmax(1)).float().mean()
    assert agree >= 0.99


def test_config_errors_and_configs():
    parsed = parse_compression(dict(method='algm'), 12)
    assert (parsed.local_layer, parsed.global_layer, parsed.threshold,
            parsed.window, parsed.proportional_attention) == \
        (0, 4, 0.88, (2, 2), False)
    for bad, match in [
        (dict(method='algm', global_layer=0), 'must come after'),
        (dict(method='algm', global_layer=4), r'outside blocks 0\.\.3'),
        (dict(method='algm', global_layer=2, threshold='high'),
         'must be a number'),
        (dict(method='algm', global_layer=2, window=1), 'at least 2 tokens'),
        (dict(method='algm', r=3), 'unknown compression keys'),
    ]:
        with pytest.raises(ValueError, match=match):
            PMVisionTransformer(**TINY, compression=bad)
    expected = {'t': (4, 0.90), 's': (4, 0.88), 'b': (4, 0.94),
                'l': (6, 0.95)}
    for arch, (glob, tau) in expected.items():
        size = 640 if arch == 'l' else 512
        cfg = Config.fromfile(
            CONFIGS / 'segmenter' /
            f'algm-segmenter_vit-{arch}_mask_8xb1-160k_ade20k-'
            f'{size}x{size}.py')
        b = cfg.model.backbone
        parsed = parse_compression(b.compression, b.num_layers)
        assert (parsed.local_layer, parsed.global_layer, parsed.threshold) \
            == (0, glob, tau)


def test_flops_count_the_blocks_on_their_tokens_and_the_merges():
    """At batch 1, the counted FLOPs are the blocks on the tokens they ran
    on plus ALGM's own work: the window similarities, the bipartite
    scores and the two segment sums."""
    from mmseg_pm.utils.flops import count_flops
    from tests.helpers import block_flops

    dense = randomise(tiny_pm())
    model = algm_from(dense, dict(method='algm', threshold=-1.0,
                                  global_layer=2))
    x = torch.randn(1, 3, 48, 80)
    flops = count_flops(model, x)
    counts = model.reducer.last_counts[0].tolist()
    assert counts[0] == 16 - 2 * 3 and counts[2] < counts[1]
    c = TINY['embed_dims']
    blocks = block_flops([16] + counts[:-1], counts, c, 1)
    windows = 2 * 2 * 4 * 4 * c  # two 2x2 windows, their 4x4 Gram matrices
    t = counts[1]  # the global merge's input
    bipartite = 2 * ((t + 1) // 2) * (t // 2) * c
    segment_sums = 2 * 16 * (c + 1) + 2 * t * (c + 1)
    embed = count_flops(tiny_pm(), x) - block_flops([16] * 4, [16] * 4, c, 1)
    assert flops == embed + blocks + windows + bipartite + segment_sums


def test_onnx_export_refuses_input_dependent_shapes(tmp_path):
    from mmseg_pm.utils.errors import UsageError
    from mmseg_pm.export import export_module

    model = tiny_pm(compression=dict(method='algm', global_layer=2))
    with pytest.raises(UsageError, match="method='algm' cannot be exported "
                       'to ONNX: each image keeps its own number'):
        export_module(model, torch.zeros(1, 3, 48, 80), tmp_path / 'a.onnx')
    assert list(tmp_path.iterdir()) == []


def test_every_reducers_similarity_products_are_counted():
    """The FLOP counter sees the similarity products of ToMe and ALGM's
    bipartite scores, ALGM's window Gram matrices and MSTM's matching
    (2 FLOPs per multiply-add), also under autocast."""
    from torch.utils.flop_counter import FlopCounterMode

    from mmseg_pm.compression.algm import grid_windows, window_similarity
    from mmseg_pm.compression.mstm import crucial_token_matching
    from mmseg_pm.compression.tome import bipartite_scores
    from mmseg_pm.utils.flops import CUSTOM_FLOPS

    def counted(fn):
        with FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS) as c:
            fn()
        return c.get_total_flops()

    x = torch.randn(2, 17, 8)
    windows = grid_windows((4, 4), (2, 2))
    assert counted(lambda: bipartite_scores(x)) == 2 * 2 * 9 * 8 * 8
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert counted(lambda: bipartite_scores(x)) == 2 * 2 * 9 * 8 * 8
    assert counted(lambda: window_similarity(x[:, 1:], windows)) == \
        2 * 2 * 4 * 4 * 4 * 8
    assert counted(lambda: crucial_token_matching(
        x[:, 1:], torch.rand(2, 16), 5)) == 2 * 2 * 11 * 5 * 8
