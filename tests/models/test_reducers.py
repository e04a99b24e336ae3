"""Every token reducer answers the same questions through one interface,
and the answers match what the backbone really runs."""
import pytest
import torch

from mmseg_pm.compression import TokenReducer
from mmseg_pm.compression.registry import method_spec
from mmseg_pm.export import compression_method
from tests.helpers import TINY, pruned_structure, randomise, tiny_pm, \
    token_counts

COMPRESSION = {
    'pm': dict(mode='span', spans=[(1, 2)], keep_rate=0.4),
    'mstm': dict(method='mstm', prune_layers=[1, 3], keep_rate=0.6),
    'tome': dict(method='tome', layers=[0, 2], r=3),
    'hourglass': dict(method='hourglass', alpha=1, clusters=(2, 3)),
    'algm': dict(method='algm', threshold=-1.0, global_layer=2),
    'mpm': dict(method='mpm', layers=[0, 2]),
}


def model_with(method):
    model = randomise(tiny_pm(compression=COMPRESSION[method],
                              out_indices=(0, 1, 2, 3)))
    if method == 'pm':
        model.set_structures([pruned_structure()])
    return model


@pytest.mark.parametrize('method', [m for m in COMPRESSION
                                    if not method_spec(m).fixed_shapes])
def test_token_counts_are_recorded_only_when_asked(method):
    """The methods whose counts follow the image record them per block,
    a graph break under torch.compile: a forward pass records none unless
    ``trace_counts`` is set."""
    model = model_with(method).eval()
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        model(x)
        assert model.reducer.last_counts is None
        model.reducer.trace_counts = True
        model(x)
    assert model.reducer.last_counts.shape == (2, len(model.layers))


@pytest.mark.parametrize('method', list(COMPRESSION))
def test_reducer_answers_match_what_runs(method):
    model = model_with(method)
    reducer = model.reducer
    assert isinstance(reducer, TokenReducer) and reducer.method == method
    assert compression_method(model) == method
    assert reducer.spec.name == method
    # only Prune and Merge has structures; only ALGM's and MPM's counts
    # follow the image; every method here merges per image (PM: content-aware windows)
    assert bool(reducer.units) == (method == 'pm')
    assert reducer.fixed_shapes == (method not in ('algm', 'mpm'))
    assert reducer.per_image_merges
    num_tokens = 16  # class token + 3 x 5
    reducer.trace_counts = True
    seen = token_counts(model, torch.randn(2, 3, 48, 80))
    per_block = reducer.tokens_per_block(num_tokens, len(model.layers))
    if reducer.fixed_shapes:
        assert per_block == seen[1::2]  # what every block's MLP ran on
    else:  # the bound; what the batch ran on is measured
        assert per_block == [num_tokens] * len(model.layers)
        assert reducer.last_counts.max(dim=0).values.tolist() == seen[1::2]
    touched = [i for i, t in enumerate(per_block) if t < num_tokens]
    assert set(touched) <= set(reducer.blocks(len(model.layers)))
    assert reducer.merging_blocks() == {'pm': [1], 'mstm': [1, 3],
                                        'tome': [0, 2],
                                        'hourglass': [1],
                                        'algm': [0, 2],
                                        'mpm': [0, 2]}[method]


@pytest.mark.parametrize('method', list(COMPRESSION))
def test_source_trace_is_opt_in_and_maps_every_original_token(method):
    model = model_with(method)
    reducer = model.reducer
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        model(x)
    assert reducer.sources == {}  # nothing recorded unless asked
    reducer.trace_source = True
    with torch.no_grad():
        model(x)
    reducer.trace_source = False
    for i in reducer.merging_blocks():
        source = reducer.sources[i]
        assert source.shape == (2, 16)
        assert torch.equal(source[:, 0], torch.zeros(2, dtype=torch.long))
        kept = source[source >= 0]
        assert kept.max() < 16


@pytest.mark.parametrize('method', list(COMPRESSION))
def test_bypass_runs_every_block_on_all_tokens(method):
    model = model_with(method)
    with model.dense_forward():
        assert model.reducer.bypass
        seen = token_counts(model, torch.randn(1, 3, 48, 80))
    assert not model.reducer.bypass
    assert set(seen) == {16}


def test_static_structures_only_for_prune_and_merge():
    model = model_with('tome')
    with pytest.raises(ValueError, match="method='tome' has no static"):
        model.set_structures([pruned_structure()])
    assert tiny_pm().reducer is None
    assert dict(TINY)['num_layers'] == len(tiny_pm().layers)


@pytest.mark.parametrize('method', list(COMPRESSION))
def test_weights_live_under_the_checkpoint_name(method):
    """The backbone registers each reducer under its ``state_dict_name``,
    the names checkpoints written so far use."""
    model = model_with(method)
    reducer = model.reducer
    assert reducer.state_dict_name == (
        'token_compressors' if method == 'pm' else 'token_merger')
    assert getattr(model, reducer.state_dict_name) is reducer
    own = model.state_dict()
    for key in reducer.state_dict():
        assert f'{reducer.state_dict_name}.{key}' in own


@pytest.mark.parametrize('method', list(COMPRESSION))
def test_blocks_follow_the_block_protocol(method):
    from mmseg_pm.compression.reducer import Block
    model = model_with(method)
    assert all(isinstance(block, Block) for block in model.layers)
    assert not isinstance(torch.nn.Linear(2, 2), Block)


@pytest.mark.parametrize('assign', ['static', 'content'])
@pytest.mark.parametrize('impl', ['sparse', 'dense'])
@pytest.mark.parametrize('reconstruct', ['residual', 'pinv'])
def test_merge_flops_is_what_count_flops_counts(impl, reconstruct, assign):
    """Prune and Merge's formula, with an output inside a unit (one more
    reconstruct), against torch's counter: the FLOPs the model counts
    beyond its blocks' are the merges."""
    from mmseg_pm.utils.flops import count_flops, vit_flops

    compression = dict(COMPRESSION['pm'], impl=impl, reconstruct=reconstruct,
                       assign=assign)
    model = randomise(tiny_pm(compression=compression, out_indices=(1, 3)))
    model.set_structures([pruned_structure()])
    reducer = model.reducer
    blocks = vit_flops(15, 32, 4, 16, tokens_per_layer=reducer.tokens_per_block(
        16, 4))
    counted = count_flops(model, torch.randn(1, 3, 48, 80))
    assert reducer.merge_flops((3, 5), 32, model.out_indices) == \
        counted - blocks > 0
    assert model_with('tome').reducer.merge_flops((3, 5), 32, (3,)) is None


def test_per_image_merges_follow_the_window_assignment():
    """Prune and Merge with content-aware windows: fixed shapes, per-image
    merges; with static windows, neither changes per image."""
    for assign in ('static', 'content'):
        model = tiny_pm(compression=dict(COMPRESSION['pm'], assign=assign))
        assert model.reducer.fixed_shapes
        assert model.reducer.per_image_merges == (assign == 'content')
    assert model_with('tome').reducer.per_image_merges
