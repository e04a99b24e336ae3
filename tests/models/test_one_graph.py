"""The compressed forward of the default (content-aware windows) and of
static windows as one graph with no host synchronisation: what
``torch.compile(fullgraph=True)`` and a CUDA graph (``mode=
'reduce-overhead'``) need. Dynamo traces the whole backbone (its eager
backend: the Inductor compile of a unit is tested in test_content.py and
test_fast_paths.py), and an eager forward is watched for every op that
reads device data on the host."""
import pytest
import torch

from mmseg_pm.benchmark.ops import count_ops
from mmseg_pm.models import PMVisionTransformer


def backbone(assign):
    torch.manual_seed(0)
    return PMVisionTransformer(
        img_size=64, patch_size=8, embed_dims=32, num_layers=4, num_heads=2,
        out_indices=(1, 3), compression=dict(
            layers=[1, 2, 3], keep_rate=0.6, assign=assign)).eval()


@pytest.mark.parametrize('assign', ['content', 'static'])
def test_the_compressed_backbone_is_one_graph(assign):
    model = backbone(assign)
    x = torch.randn(2, 3, 64, 64)
    from torch._dynamo.utils import counters
    with torch.no_grad():
        eager = model(x)
        torch._dynamo.reset()
        counters.clear()
        # fullgraph: a graph break (an .item(), a shape read from data)
        # raises
        compiled = torch.compile(model, fullgraph=True, backend='eager',
                                 dynamic=False)
        for got, want in zip(compiled(x), eager):
            assert torch.allclose(got, want, atol=1e-5)
        compiled(torch.randn_like(x))
    assert counters['stats']['unique_graphs'] == 1  # none more for new data


@pytest.mark.parametrize('assign', ['content', 'static'])
@pytest.mark.parametrize('batch', [1, 3])
def test_the_compressed_forward_reads_nothing_on_the_host(assign, batch):
    model = backbone(assign)
    x = torch.randn(batch, 3, 64, 64)
    with torch.no_grad():
        model(x)  # the first call at a batch size plans its indices
    counter = count_ops(lambda: model(x))
    assert not counter.syncs, dict(counter.syncs)
    assert counter.launches > 0


def test_the_watch_sees_a_host_read():
    """The control: ``.item()`` and a data-sized output are caught."""
    x = torch.randn(8)
    counter = count_ops(lambda: (x.sum().item(), torch.nonzero(x > 0)))
    assert set(counter.syncs) == {'_local_scalar_dense', 'nonzero'}


@pytest.mark.parametrize('assign', ['content', 'static'])
def test_what_inference_keeps_serves_training_afterwards(assign):
    """The plans and weights kept by an inference_mode forward are normal
    tensors: training with frozen unit weights (nothing recomputed) runs
    backward through them."""
    model = backbone(assign)
    for unit in model.reducer.values():
        unit.merge_weight.requires_grad_(False)
        unit.reconstruct_weight.requires_grad_(False)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        model(x)
    model.train()
    sum(o.square().mean() for o in model(x)).backward()
    assert model.layers[0].ffn.layers[1].weight.grad.abs().sum() > 0
