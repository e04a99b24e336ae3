"""PMVisionTransformer against mmseg's VisionTransformer, and its compression."""
import pytest
import torch
from mmengine.runner.checkpoint import load_checkpoint
from mmseg.models.backbones import VisionTransformer
from mmseg.registry import MODELS

import mmseg_pm.models  # noqa: F401
from mmseg_pm.compression import build_structure
from mmseg_pm.models import PMVisionTransformer
from tests.helpers import GRID, TINY, pruned_structure, randomise, tiny_pm


@pytest.mark.parametrize('with_cls_token', [True, False])
@pytest.mark.parametrize('out_indices', [-1, (0, 2), (1, 3)])
def test_dense_matches_mmseg_vision_transformer(with_cls_token, out_indices):
    cfg = dict(TINY, with_cls_token=with_cls_token, out_indices=out_indices)
    oracle = VisionTransformer(**cfg)
    oracle.eval()  # mmseg's train() returns None
    ours = PMVisionTransformer(**cfg).eval()
    assert list(oracle.state_dict()) == list(ours.state_dict())
    randomise(oracle)
    ours.load_state_dict(oracle.state_dict(), strict=True)
    x = torch.randn(2, 3, 48, 80)  # non-square: 3 x 5 tokens
    with torch.no_grad():
        expected, got = oracle(x), ours(x)
    assert len(expected) == len(got)
    for e, o in zip(expected, got):
        assert o.shape == e.shape
        assert (o - e).abs().max().item() <= 1e-4
    # a different input size exercises the pos-embed resize path too
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for e, o in zip(oracle(x), ours(x)):
            assert (o - e).abs().max().item() <= 1e-4


def test_output_cls_token_and_out_origin_match_mmseg():
    cfg = dict(TINY, output_cls_token=True, out_origin=True, pre_norm=True,
               out_indices=(1, 3))
    oracle = randomise(VisionTransformer(**cfg))
    oracle.eval()
    ours = PMVisionTransformer(**cfg).eval()
    ours.load_state_dict(oracle.state_dict(), strict=True)
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        for (e, ecls), (o, ocls) in zip(oracle(x), ours(x)):
            assert (o - e).abs().max() <= 1e-4
            assert (ocls - ecls).abs().max() <= 1e-4


def test_explicit_softmax_path_equals_fused_attention():
    model = randomise(tiny_pm(out_indices=(0, 1, 2, 3)))
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        fused = model(x)
        seen = []
        for layer in model.layers:
            layer.attn.probs_hook = seen.append
        explicit = model(x)
    assert len(seen) == 4 and seen[0].shape == (2, 2, 16, 16)
    assert torch.allclose(seen[0].sum(-1), torch.ones(2, 2, 16))
    for a, b in zip(fused, explicit):
        assert (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize('compression', [
    dict(mode='layer', layers=[1, 2, 3], keep_rate=0.5),
    dict(mode='span', spans=[(0, 1), (2, 3)], keep_rate=0.5),
])
def test_sparse_equals_dense_matrix_formulation(compression):
    sparse = randomise(tiny_pm(compression=dict(compression, impl='sparse'),
                               out_indices=(0, 1, 2, 3)))
    dense = tiny_pm(compression=dict(compression, impl='dense'),
                    out_indices=(0, 1, 2, 3))
    dense.load_state_dict(sparse.state_dict())
    structures = [pruned_structure(seed=i) for i in range(2 if compression[
        'mode'] == 'span' else 3)]
    sparse.set_structures(structures)
    dense.set_structures(structures)
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        for a, b in zip(sparse(x), dense(x)):
            assert a.shape == (2, 32, 3, 5)
            assert (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize('compression,out_indices', [
    (dict(mode='layer', layers=[0, 2]), (0, 1, 2, 3)),
    (dict(mode='span', spans=[(0, 2)]), (0, 1, 2, 3)),
    (dict(mode='span', spans=[(1, 3)]), (2, )),  # output inside the span
])
def test_full_grid_at_every_out_index(compression, out_indices):
    model = randomise(tiny_pm(compression=dict(compression, keep_rate=0.4),
                              out_indices=out_indices))
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        outs = model(x)
    assert len(outs) == len(out_indices)
    for out in outs:
        assert out.shape == (2, 32, 3, 5)
        assert torch.isfinite(out).all()


def test_output_inside_span_is_reconstructed_from_compressed_tokens():
    """An out_index inside a span sees reconstruct(x) of the merged stream:
    with every token its own centre, the span is the dense model."""
    dense = randomise(tiny_pm(out_indices=(1, 2)))
    model = tiny_pm(compression=dict(mode='span', spans=[(0, 3)]),
                    out_indices=(1, 2))
    model.load_state_dict(dense.state_dict(), strict=False)
    model.set_structures([build_structure(GRID, torch.arange(15))])
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        for a, b in zip(dense(x), model(x)):
            assert (a - b).abs().max() <= 1e-5


def test_compression_changes_the_function_and_pruned_tokens_bypass():
    dense = randomise(tiny_pm(out_indices=(0, )))
    model = tiny_pm(compression=dict(mode='layer', layers=[0]),
                    out_indices=(0, ), final_norm=False)
    dense_nf = tiny_pm(out_indices=(0, ), final_norm=False)
    dense_nf.load_state_dict(dense.state_dict(), strict=False)
    model.load_state_dict(dense.state_dict(), strict=False)
    n = 15
    # every token pruned but one centre: pruned tokens pass unchanged
    structure = build_structure(GRID, [7], pruned=[i for i in range(n)
                                                   if i != 7])
    model.set_structures([structure])
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        tokens, _ = model._embed(x)
        out = model(x)[0].flatten(2).transpose(1, 2)[0]
        reference = dense_nf(x)[0].flatten(2).transpose(1, 2)[0]
    pruned = torch.ones(n, dtype=torch.bool)
    pruned[7] = False
    assert torch.allclose(out[pruned], tokens[0, 1:][pruned], atol=1e-6)
    assert not torch.allclose(out, reference, atol=1e-3)


def test_structure_round_trip_through_config_and_checkpoint(tmp_path):
    cfg = dict(type='PMVisionTransformer', **TINY,
               compression=dict(mode='layer', layers=[1, 3], keep_rate=0.6))
    model = MODELS.build(cfg)
    model.init_weights()
    model.set_structures([pruned_structure(seed=3), pruned_structure(seed=4)])
    with torch.no_grad():  # trained weights differ from their init values
        for comp in model.token_compressors.values():
            comp.merge_weight.mul_(1.5)
            comp.reconstruct_weight.add_(0.01)
    path = tmp_path / 'pm.pth'
    torch.save({'state_dict': model.state_dict()}, path)

    restored = MODELS.build(cfg)
    restored.init_weights()
    load_checkpoint(restored, str(path), map_location='cpu', strict=True)
    for a, b in zip(model.structures(), restored.structures()):
        assert torch.equal(a.group, b.group)
        assert torch.equal(a.centre, b.centre)
        assert torch.equal(a.weight, b.weight)
    assert [c.num_groups for c in restored.token_compressors.values()] == \
        [5, 5]
    x = torch.randn(2, 3, 48, 80)
    model.eval(), restored.eval()
    with torch.no_grad():
        assert torch.equal(model(x)[0], restored(x)[0])


def test_checkpoint_for_other_units_or_grid_is_refused(tmp_path):
    model = tiny_pm(compression=dict(mode='layer', layers=[1, 3]))
    other_units = tiny_pm(compression=dict(mode='layer', layers=[2]))
    with pytest.raises(ValueError, match=r"blocks \['1', '3'\].*\['2'\]"):
        other_units.load_state_dict(model.state_dict(), strict=False)
    bigger = tiny_pm(compression=dict(mode='layer', layers=[1, 3]),
                     img_size=(64, 80))
    with pytest.raises(ValueError, match='3x5 token grid.*4x5'):
        bigger.load_state_dict(model.state_dict(), strict=False)


def test_smaller_grid_is_padded_and_cropped_larger_gets_its_own():
    model = randomise(tiny_pm(compression=dict(mode='layer', layers=[0, 1]),
                              out_indices=(1, 3)))
    small = torch.randn(1, 3, 40, 60)  # 3x4 tokens (corner-padded), grid 3x5
    padded = torch.nn.functional.pad(small, (0, 20, 0, 8))
    with torch.no_grad():
        outs, ref = model(small), model(padded)
    for o, r in zip(outs, ref):
        assert o.shape == (1, 32, 3, 4)
        assert torch.equal(o, r[..., :3, :4])
    big = torch.randn(2, 3, 64, 80)  # 4x5 tokens, larger than 3x5
    saved = list(model.state_dict())
    with torch.no_grad():
        outs = model(big)
    assert [o.shape for o in outs] == [(2, 32, 4, 5)] * 2
    reducer = model.reducer
    derived = reducer.compressors((4, 5))
    assert sorted(derived) == [0, 1]
    for first, unit in derived.items():
        own = reducer.compressor(first)
        assert unit.grid_size == (4, 5)
        assert round(own.num_groups * 20 / 15) == unit.num_groups
    with torch.no_grad():
        again = model(big)
    assert reducer.compressors((4, 5)) is derived  # one build per grid
    assert all(torch.equal(a, b) for a, b in zip(outs, again))
    assert list(model.state_dict()) == saved  # derived units are not saved


def test_gradients_reach_merge_and_reconstruct_weights():
    model = tiny_pm(compression=dict(mode='span', spans=[(1, 2)]))
    model.set_structures([pruned_structure()])
    model.train()
    model(torch.randn(2, 3, 48, 80))[0].square().mean().backward()
    comp = model.token_compressors['1']
    kept = comp.group >= 0
    for p in (comp.merge_weight, comp.reconstruct_weight):
        assert p.grad is not None
        assert (p.grad[kept] != 0).any()
        assert (p.grad[~kept] == 0).all()  # off the support: no gradient
    frozen = tiny_pm(compression=dict(mode='span', spans=[(1, 2)],
                                      trainable=False))
    assert not frozen.token_compressors['1'].merge_weight.requires_grad
    assert not frozen.token_compressors['1'].reconstruct_weight.requires_grad


@pytest.mark.parametrize('compression,match', [
    (dict(mode='layer', layers=[4]), 'outside blocks 0..3'),
    (dict(mode='span', spans=[(0, 2), (2, 3)]), 'overlap'),
    (dict(mode='layer', layers=[1], keep_rate=0.7, prune_rate=0.4), '> 1'),
    (dict(mode='layer', layers=[1], keep_rate=0), 'keep_rate'),
    (dict(mode='span', layers=[1]), "takes spans"),
    (dict(mode='layer', layers=[1], keep=0.5), 'unknown compression keys'),
    (dict(mode='layer', layers=[1], rule='diagonal'), 'rule'),
    (dict(mode='layer', layers=[1], impl='fast'), 'impl'),
])
def test_bad_compression_config_is_refused(compression, match):
    with pytest.raises(ValueError, match=match):
        PMVisionTransformer(**TINY, compression=compression)
