"""Proportional attention in Prune and Merge units: the log window sizes
on the attention logits make a unit over windows of identical tokens
give exactly the dense block's output (the oracle), static and
content-aware windows alike; without them it does not."""
import pytest
import torch

from mmseg_pm.compression.merge import PMConfig
from mmseg_pm.compression.merge import PruneAndMerge
from mmseg_pm.compression.structure import build_structure
from mmseg_pm.models.backbones.pm_vit import TransformerBlock

GRID = (4, 6)
CENTRES = torch.tensor([0, 4, 9, 14, 19, 22])


def unit(assign, impl, proportional):
    structure = build_structure(GRID, CENTRES, rule='nearest')
    return PruneAndMerge([(0, 0)], structure, num_prefix=1, impl=impl,
                         reconstruct='residual', assign=assign,
                         proportional_attention=proportional), structure


def windows_of_identical_tokens(structure, batch=2, dims=16):
    """Class token and one random vector per window, copied to each of its
    tokens (sizes 2 to 6 with these centres)."""
    torch.manual_seed(0)
    values = torch.randn(batch, structure.num_groups, dims) * 2
    patches = values[:, structure.group]
    return torch.cat((torch.randn(batch, 1, dims), patches), 1)


@pytest.mark.parametrize('impl', ['sparse', 'dense'])
@pytest.mark.parametrize('assign', ['static', 'content'])
def test_windows_of_identical_tokens_give_the_dense_output(assign, impl):
    torch.manual_seed(1)
    block = TransformerBlock(16, 2, 32).eval()
    reducer, structure = unit(assign, impl, proportional=True)
    sizes = torch.bincount(structure.group)
    assert sizes.min() >= 2 and len(set(sizes.tolist())) > 2
    x = windows_of_identical_tokens(structure)
    with torch.no_grad():
        dense = block(x)
        out, state = reducer.run_block(0, block, x, reducer.start(x, GRID))
        assert state[1] is None and out.shape == dense.shape  # unit done
        assert (out - dense).abs().max() <= 1e-5
        plain, _ = unit(assign, impl, proportional=False)
        without = plain.run_block(0, block, x, plain.start(x, GRID))[0]
    # the bias is what makes it exact: each window weighs as its tokens
    assert (without - dense).abs().max() > 1e-2


def test_the_bias_is_each_images_window_sizes():
    reducer, structure = unit('content', 'sparse', proportional=True)
    x = windows_of_identical_tokens(structure)
    comp = reducer.compressor(0)
    merged, context = comp.merge(x, 1)
    bias = comp.attention_bias(context, 1, x.dtype)
    assert bias.shape == (2, 1, 1, 1 + structure.num_groups)
    sizes = torch.cat((torch.ones(1), torch.bincount(structure.group).float()))
    assert torch.allclose(bias.exp(), sizes.expand(2, 1, 1, -1))
    static, _ = unit('static', 'sparse', proportional=True)
    comp = static.compressor(0)
    assert torch.allclose(
        comp.attention_bias(comp.merge(x, 1)[1], 1, x.dtype).exp(),
        sizes.expand(1, 1, 1, -1))


def test_the_config_flag_reaches_the_reducer_and_refuses_non_flags():
    cfg = dict(mode='layer', layers=[1, 2], proportional_attention=True)
    reducer = PMConfig.from_dict(cfg, 4).build_reducer((4, 4), 16, 1, 32)
    assert reducer.proportional_attention
    assert not PMConfig.from_dict(dict(mode='layer', layers=[1]), 4
                                  ).proportional_attention
    with pytest.raises(ValueError, match='proportional_attention must be '
                       'True or False'):
        PMConfig.from_dict(dict(cfg, proportional_attention='yes'), 4)
