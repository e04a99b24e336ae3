"""The residual reconstruction against the authors' pinv form, and the
centre placements of the structure search (docs/residual.md)."""
import pytest
import torch

import mmseg_pm.models  # noqa: F401
from mmseg_pm.compression import (PMConfig, TokenCompressor, merge_matrix,
                                  build_structure, grid_cells,
                                  mean_merge_weights, place_centres,
                                  search_structures)
from mmseg_pm.study import empty_neighbourhoods
from tests.helpers import GRID, pruned_structure, randomise, tiny_pm

MODES = ('residual', 'pinv')
UNITS = {'layer': dict(mode='layer', layers=[1, 2, 3]),
         'span': dict(mode='span', spans=[(0, 1), (2, 3)])}


def compressed(reconstruct, mode='span', impl='sparse', **kwargs):
    """A tiny randomised backbone with pruned and merged tokens in every
    unit (out_indices at every block, inside the spans too), static windows
    (content-aware ones: test_content.py)."""
    model = randomise(tiny_pm(
        compression=dict(UNITS[mode], keep_rate=0.5, impl=impl,
                         reconstruct=reconstruct, assign='static'),
        out_indices=(0, 1, 2, 3),
        **kwargs))
    model.set_structures([pruned_structure(seed=i)
                          for i in range(len(model.compressed_units))])
    return model


@pytest.mark.parametrize('reconstruct', MODES)
@pytest.mark.parametrize('mode', ['layer', 'span'])
def test_every_token_a_centre_is_the_dense_model(reconstruct, mode):
    dense = randomise(tiny_pm(out_indices=(0, 1, 2, 3)))
    model = tiny_pm(compression=dict(UNITS[mode], keep_rate=1.0,
                                     reconstruct=reconstruct),
                    out_indices=(0, 1, 2, 3))
    model.load_state_dict(dense.state_dict(), strict=False)
    assert all(c.num_groups == 15 for c in model.token_compressors.values())
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        for a, b in zip(dense(x), model(x)):
            assert (a - b).abs().max() <= 1e-5


def test_residual_differs_from_pinv_and_keeps_each_tokens_own_value():
    residual, pinv = compressed('residual'), compressed('pinv')
    pinv.load_state_dict({k: v for k, v in residual.state_dict().items()
                          if 'token_compressors' not in k}, strict=False)
    pinv.set_structures(residual.structures())  # same centres and windows
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        a, b = residual(x)[-1], pinv(x)[-1]
    assert (a - b).abs().max() > 1e-2
    # pinv: the members of a window are scaled copies of one vector; the
    # residual form keeps them apart
    structure = pinv.structures()[-1]
    window = torch.nonzero(structure.group == int(
        structure.tokens_per_group().argmax())).flatten()
    tokens_p = b.flatten(2)[0, :, window].T
    tokens_r = a.flatten(2)[0, :, window].T
    rank = torch.linalg.matrix_rank
    assert rank(tokens_p, rtol=1e-4) == 1 and rank(tokens_r) > 1


@pytest.mark.parametrize('mode', ['layer', 'span'])
def test_residual_unit_formula_by_hand(mode):
    """``x + R~ (B(M~ x) - M~ x)`` written with explicit matrices, also for
    an output inside a span."""
    model = compressed('residual', mode)
    x = torch.randn(1, 3, 48, 80)
    units = {first: last for first, last in model.compressed_units}
    with torch.no_grad():
        tokens, _ = model._embed(x)
        current, expected, unit = tokens[0], [], None
        for i, block in enumerate(model.layers):
            if i in units:
                s = model.token_compressors[str(i)].structure()
                m = torch.zeros(1 + s.num_groups, 16)
                m[0, 0] = 1  # the class token is its own window
                m[1:, 1:] = merge_matrix(s.group, s.weight, s.num_groups)
                r = m.T.bool().float()  # R~ = 1 on M's support
                unit = (units[i], current, m @ current, r)
                y = unit[2]
            y = block((y if unit else current)[None])[0]
            if unit:
                last, start, merged, r = unit
                full = start + r @ (y - merged)
                if i == last:
                    current, unit = full, None
            else:
                current = full = y
            expected.append(full)
        outs = model(x)
    expected[-1] = model.ln1(expected[-1])  # final_norm
    for out, ref in zip(outs, expected):
        assert (out.flatten(2)[0].T - ref[1:]).abs().max() <= 1e-5


@pytest.mark.parametrize('reconstruct', MODES)
@pytest.mark.parametrize('mode', ['layer', 'span'])
def test_sparse_equals_dense_matrices_in_value_and_gradient(reconstruct,
                                                            mode):
    sparse = compressed(reconstruct, mode, impl='sparse').train()
    dense = compressed(reconstruct, mode, impl='dense').train()
    dense.load_state_dict(sparse.state_dict())
    x = torch.randn(2, 3, 48, 80)
    outs = [model(x) for model in (sparse, dense)]
    for a, b in zip(*outs):
        assert a.shape == (2, 32, 3, 5)
        assert (a - b).abs().max() <= 1e-5
    for model, out in zip((sparse, dense), outs):
        sum(o.square().mean() for o in out).backward()
    for name, p in sparse.named_parameters():
        q = dict(dense.named_parameters())[name]
        assert (p.grad - q.grad).abs().max() <= 1e-5, name


@pytest.mark.parametrize('reconstruct', MODES)
def test_gradients_reach_merge_and_reconstruct_weights_on_their_support(
        reconstruct):
    model = compressed(reconstruct).train()
    sum(o.square().mean() for o in model(torch.randn(2, 3, 48, 80))
        ).backward()
    for comp in model.token_compressors.values():
        kept = comp.group >= 0
        for p in (comp.merge_weight, comp.reconstruct_weight):
            assert (p.grad[kept] != 0).any()
            assert (p.grad[~kept] == 0).all()


def test_residual_weights_are_window_means_and_unit_spreads():
    comp = TokenCompressor(pruned_structure(), reconstruct='residual',
                           assign='static')
    s = pruned_structure()
    kept = s.group >= 0
    sums = torch.zeros(s.num_groups).index_add(
        0, s.group[kept], comp.merge_weight.detach()[kept])
    assert torch.allclose(sums, torch.ones(s.num_groups))
    assert torch.equal(comp.reconstruct_weight.detach(), kept.float())
    # merge weights keep the scores' ratios inside a window
    assert torch.allclose(mean_merge_weights(s.group, s.weight * 3,
                                             s.num_groups),
                          comp.merge_weight.detach())


@pytest.mark.parametrize('impl', ['sparse', 'dense'])
def test_pruned_tokens_pass_a_residual_unit_unchanged(impl):
    comp = TokenCompressor(pruned_structure(), impl=impl)
    x = torch.randn(2, 16, 8)  # class token + 15
    merged, context = comp.merge(x, num_prefix=1)
    out = comp.reconstruct(torch.randn_like(merged), context, num_prefix=1)
    pruned = torch.cat((torch.tensor([False]), comp.group < 0))
    assert pruned.sum() == 3
    assert torch.equal(out[:, pruned], x[:, pruned])
    assert not torch.allclose(out[:, ~pruned], x[:, ~pruned])


def test_checkpoint_of_one_reconstruction_is_refused_by_the_other():
    residual, pinv = compressed('residual'), compressed('pinv')
    with pytest.raises(ValueError, match="reconstruct='residual'.*"
                       "reconstruct='pinv'.*set compression reconstruct"):
        pinv.load_state_dict(residual.state_dict())
    with pytest.raises(ValueError, match="made with reconstruct='pinv'"):
        residual.load_state_dict(pinv.state_dict())
    # checkpoints from before the residual form carry no mode: pinv
    old = {k: v for k, v in pinv.state_dict().items()
           if not k.endswith('.residual')}
    pinv.load_state_dict(old)
    with pytest.raises(ValueError, match="made with reconstruct='pinv'"):
        residual.load_state_dict(old)


@pytest.mark.parametrize('reconstruct', MODES)
def test_trained_weights_survive_a_checkpoint(tmp_path, reconstruct):
    model = compressed(reconstruct)
    with torch.no_grad():
        for comp in model.token_compressors.values():
            comp.merge_weight.mul_(1.3)
            comp.reconstruct_weight.add_(0.2)
    path = tmp_path / 'model.pth'
    torch.save(model.state_dict(), path)
    restored = compressed(reconstruct)
    restored.load_state_dict(torch.load(path, weights_only=True))
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        assert torch.equal(model(x)[-1], restored(x)[-1])


@pytest.mark.parametrize('value', ['inverse', 1, None])
def test_unknown_reconstruct_is_refused_naming_the_choices(value):
    with pytest.raises(ValueError, match=r"reconstruct must be one of "
                       r"\('residual', 'pinv'\)"):
        tiny_pm(compression=dict(mode='layer', layers=[1],
                                 reconstruct=value))


@pytest.mark.parametrize('setting, match', [
    (dict(reconstruct='inverse'), 'reconstruct must be one of'),
    (dict(impl='fast'), 'impl must be one of'),
    (dict(neighbourhood=2), 'neighbourhood must be an odd int')])
def test_a_unit_built_directly_is_refused_as_its_config_is(setting, match):
    """One check for a unit's settings: the same message whether they come
    through the config or straight to the unit."""
    with pytest.raises(ValueError, match=match):
        TokenCompressor(pruned_structure(), **setting)
    with pytest.raises(ValueError, match=match):
        tiny_pm(compression=dict(mode='layer', layers=[1], **setting))


# ---------------------------------------------------------------- placement
@pytest.mark.parametrize('grid', [(12, 12), (3, 5), (7, 20), (1, 9)])
def test_grid_cells_tile_the_grid_into_exactly_count_cells(grid):
    n = grid[0] * grid[1]
    for count in sorted({1, 2, 3, n // 4 or 1, n // 2, n - 1, n}):
        cells = grid_cells(grid, count)
        assert torch.equal(cells.unique(), torch.arange(count))
        sizes = torch.bincount(cells)
        assert sizes.max() <= 2 * sizes.min() + 2  # near-equal cells
    with pytest.raises(ValueError, match=r'count must be in \[1, '):
        grid_cells(grid, n + 1)


def clustered_scores(grid=(12, 12)):
    """Scores that are high in one corner only (as attention often is)."""
    h, w = grid
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    return (-(y + x).float() / 4).exp().flatten() + 1e-3


@pytest.mark.parametrize('placement', ['score', 'spread', 'lattice',
                                       'random'])
def test_every_placement_meets_the_count_and_avoids_pruned_tokens(placement):
    scores = clustered_scores()
    pruned = torch.zeros(144, dtype=torch.bool)
    pruned[torch.sort(scores).indices[:30]] = True
    centres = place_centres(scores, 36, (12, 12), pruned, placement, seed=3)
    assert centres.numel() == 36 == centres.unique().numel()
    assert not pruned[centres].any()
    again = place_centres(scores, 36, (12, 12), pruned, placement, seed=3)
    assert torch.equal(centres.sort().values, again.sort().values)


def test_spread_centres_leave_no_region_empty_where_scores_cluster():
    scores = clustered_scores()
    holes = {}
    for placement in ('score', 'spread', 'lattice'):
        centres = place_centres(scores, 36, (12, 12), None, placement)
        holes[placement] = empty_neighbourhoods(
            build_structure((12, 12), centres, scores=scores))
    assert holes['score'] > 0.5  # top scores sit in one corner
    assert holes['spread'] == holes['lattice'] == 0
    # spread takes each cell's best token: the top-scored token is a centre
    spread = place_centres(scores, 36, (12, 12), None, 'spread')
    assert int(scores.argmax()) in spread.tolist()


def test_search_keeps_the_rankings_counts_under_every_placement():
    scores = torch.rand(4, 64, generator=torch.Generator().manual_seed(0))
    scores[3] *= 3  # the global ranking gives block 3 more centres
    config = PMConfig.from_dict(
        dict(mode='layer', layers=[1, 2, 3], keep_rate=0.3, prune_rate=0.1),
        4)
    found = {p: search_structures(scores, config, (8, 8), 'global', p)
             for p in ('score', 'spread', 'lattice', 'random')}
    counts = [s.num_groups for s in found['score']]
    assert len(set(counts)) > 1
    for placement, structures in found.items():
        assert [s.num_groups for s in structures] == counts, placement
        for s, ref in zip(structures, found['score']):
            assert torch.equal(s.pruned, ref.pruned)  # pruning: the ranking's
    assert not torch.equal(found['spread'][2].centre,
                           found['score'][2].centre)


def test_unknown_or_impossible_placement_is_refused():
    config = PMConfig.from_dict(dict(mode='layer', layers=[1]), 2)
    with pytest.raises(ValueError, match=r"placement must be one of \("
                       r"'score', 'spread', 'lattice', 'random'\)"):
        search_structures(torch.rand(2, 15), config, GRID, 'global', 'grid')
    everything_pruned = torch.ones(15, dtype=torch.bool)
    everything_pruned[:2] = False
    with pytest.raises(ValueError, match='cannot place 3 centres: 2 of the '
                       '15 tokens are not pruned'):
        place_centres(torch.rand(15), 3, GRID, everything_pruned, 'spread')
