"""The compressed backbone's fast paths: the sparse merge against the dense
matrices (values and gradients), its caches, bf16 autocast and
torch.compile without graph breaks."""
import pytest
import torch
import torch._dynamo

from mmseg_pm.compression import build_structure
from mmseg_pm.compression.unit import TokenCompressor
from mmseg_pm.models import PMVisionTransformer
from tests.helpers import assert_compiled_unit_matches_eager

TINY = dict(img_size=(48, 80), patch_size=16, embed_dims=32, num_layers=3,
            num_heads=2, final_norm=True, drop_path_rate=0.0)
GRID = (3, 5)


def structure(seed=0):
    """Centres, merged and pruned tokens, uneven weights."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(15, generator=g)
    return build_structure(GRID, order[:5], order[5:8],
                           torch.rand(15, generator=g) + 0.1)


def tiny_backbone(impl='sparse', reconstruct='residual', **kwargs):
    torch.manual_seed(0)
    model = PMVisionTransformer(
        **TINY, out_indices=(1, 2),
        compression=dict(mode='span', spans=[(1, 2)], keep_rate=0.5,
                         impl=impl, reconstruct=reconstruct), **kwargs)
    model.init_weights()
    model.set_structures([structure()])
    return model.eval()


@pytest.mark.parametrize('assign', ['content', 'static'])
@pytest.mark.parametrize('reconstruct', ['residual', 'pinv'])
def test_sparse_and_dense_matrix_units_agree_in_value_and_gradient(
        reconstruct, assign):
    x = torch.randn(2, 16, 8, dtype=torch.float64)  # class token + 15
    grads = {}
    for impl in ('sparse', 'dense'):
        comp = TokenCompressor(structure(), impl=impl,
                               reconstruct=reconstruct,
                               assign=assign).double()
        xi = x.clone().requires_grad_()
        merged, shortcut = comp.merge(xi, num_prefix=1)
        assert merged.shape == (2, 6, 8)
        assert torch.equal(merged[:, 0], x[:, 0])  # class token passes
        full = comp.reconstruct(merged.tanh(), shortcut, num_prefix=1)
        (full * torch.linspace(-1, 1, 8, dtype=x.dtype)).sum().backward()
        grads[impl] = (full.detach(), xi.grad, comp.merge_weight.grad,
                       comp.reconstruct_weight.grad)
    for a, b in zip(grads['sparse'], grads['dense']):
        assert torch.allclose(a, b, atol=1e-10)


def test_weights_are_read_at_every_forward_and_cached_rows_serve_training():
    """The merge and reconstruct weights are not cached: an in-place update
    changes the next output. The row indices are cached per input shape:
    those made under inference_mode serve a training step, whose gradient
    reaches the merge weights (never a pruned token's)."""
    model = tiny_backbone()
    x = torch.randn(2, 3, 48, 80)
    with torch.inference_mode():
        before = model(x)[0]
    comp = model.token_compressors['1']
    with torch.no_grad():
        comp.reconstruct_weight.mul_(2)
        after = model(x)[0]
    assert not torch.allclose(before, after)
    # indices cached under inference_mode must serve a training step
    model.train()
    model(x)[0].sum().backward()
    assert comp.merge_weight.grad is not None
    assert comp.merge_weight.grad[comp.group < 0].abs().sum() == 0


def test_bf16_autocast_matches_fp32():
    model = tiny_backbone()
    x = torch.randn(2, 3, 48, 80)
    with torch.inference_mode():
        ref = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = model(x)
    for r, o in zip(ref, low):
        assert torch.isfinite(o).all()
        assert (o.float() - r).norm() / r.norm() < 0.05


@pytest.mark.parametrize('reconstruct', ['residual', 'pinv'])
def test_whole_compressed_backbone_traces_without_graph_breaks(reconstruct):
    model = tiny_backbone(reconstruct=reconstruct)
    x = torch.randn(1, 3, 48, 80)
    torch._dynamo.reset()
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compiled_compressed_unit_matches_eager():
    model = tiny_backbone()
    assert_compiled_unit_matches_eager(model.token_compressors['1'],
                                       model.layers[1])
