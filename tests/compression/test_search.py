"""Structure search from hand-made token scores (docs/prune_and_merge.md
section 2)."""
import dataclasses

import pytest
import torch

from mmseg_pm.compression import (PMConfig, merge_matrix,
                                  reconstruct_matrix, reconstruct_weights,
                                  search_structures, select_tokens)


def layers(layer_ids, num_layers=4, **kwargs):
    return PMConfig.from_dict(
        dict(mode='layer', layers=layer_ids, **kwargs), num_layers)


def roles(structure):
    """(centres, pruned, merged) token index lists."""
    centres = structure.centre.tolist()
    pruned = torch.nonzero(structure.group < 0).flatten().tolist()
    merged = [p for p in range(structure.num_tokens)
              if p not in centres and p not in pruned]
    return centres, pruned, merged


# 2 x 4 grid (non-square), one compressed layer.
SCORES_2x4 = torch.tensor([0.9, 0.1, 0.2, 0.8, 0.3, 0.05, 0.7, 0.4])


def test_row_rule_centres_windows_and_weights_by_hand():
    config = layers([0], num_layers=1, keep_rate=0.25, prune_rate=0.25)
    (s, ) = search_structures(SCORES_2x4[None], config, (2, 4),
                              placement='score')
    # int(0.25 * 8) = 2 centres: the two highest (0.9, 0.8); 2 pruned: the
    # two lowest (0.05, 0.1).
    assert roles(s) == ([0, 3], [1, 5], [2, 4, 6, 7])
    # boundary 0|3 = min(ceil(1.5), end of row 0) = 2; row 1 has no centre
    # and joins the last window.
    assert s.group.tolist() == [0, -1, 1, 1, 1, -1, 1, 1]
    expected = torch.tensor([1, 0, 0.2 / 0.8, 1, 0.3 / 0.8, 0, 0.7 / 0.8,
                             0.4 / 0.8])
    torch.testing.assert_close(s.weight, expected)


def test_nearest_rule_by_hand():
    config = layers([0], num_layers=1, keep_rate=0.25, prune_rate=0.25,
                    rule='nearest')
    (s, ) = search_structures(SCORES_2x4[None], config, (2, 4),
                              placement='score')
    # (1,0) is next to centre (0,0); (1,2) and (1,3) are nearer (0,3).
    assert s.group.tolist() == [0, -1, 1, 1, 0, -1, 1, 1]
    assert s.weight[4].item() == pytest.approx(0.3 / 0.9)


@pytest.mark.parametrize('rule', ['row', 'nearest'])
@pytest.mark.parametrize('grid', [(3, 5), (4, 4)])
def test_merge_times_reconstruct_is_identity(rule, grid):
    n = grid[0] * grid[1]
    scores = torch.rand(3, n, generator=torch.Generator().manual_seed(0))
    config = layers([0, 1, 2], num_layers=3, keep_rate=0.4, prune_rate=0.2,
                    rule=rule)
    for s in search_structures(scores, config, grid, placement='score'):
        m = merge_matrix(s.group, s.weight, s.num_groups)
        r = reconstruct_matrix(s.group, reconstruct_weights(
            s.group, s.weight, s.num_groups), s.num_groups)
        torch.testing.assert_close(m @ r, torch.eye(s.num_groups))


def test_global_ranking_matches_the_thresholds_of_the_paper():
    # 4 compressed layers of a 3 x 5 grid, distinct random scores.
    grid, n, units = (3, 5), 15, 4
    scores = torch.rand(6, n, generator=torch.Generator().manual_seed(1))
    scores[2] *= 3  # one layer scores much higher: it should keep more
    config = layers([1, 2, 3, 5], num_layers=6, keep_rate=0.4,
                    prune_rate=0.2)
    structures = search_structures(scores, config, grid, 'global',
                                   placement='score')
    compressed = scores[[1, 2, 3, 5]]
    flat = compressed.flatten()
    keep_threshold = flat.sort(descending=True).values[int(0.4 * n) * units
                                                       - 1]
    prune_threshold = flat.sort().values[int(0.2 * n) * units - 1]
    for s, row in zip(structures, compressed):
        centres, pruned, _ = roles(s)
        assert centres == torch.nonzero(row >= keep_threshold).flatten(
        ).tolist()
        assert pruned == torch.nonzero(row <= prune_threshold).flatten(
        ).tolist()
    counts = [s.num_groups for s in structures]
    assert sum(counts) == int(0.4 * n) * units
    assert sum(s.num_pruned for s in structures) == int(0.2 * n) * units
    assert counts[1] > counts[0]  # the high-scoring layer keeps more
    assert len(set(counts)) > 1  # each layer gets its own count


def test_layer_ranking_gives_every_layer_the_same_counts():
    scores = torch.rand(4, 15, generator=torch.Generator().manual_seed(2))
    scores[1] *= 5
    config = layers([0, 1, 2, 3], keep_rate=0.4, prune_rate=0.2)
    for s, row in zip(search_structures(scores, config, (3, 5), 'layer',
                                        placement='score'),
                      scores):
        centres, pruned, _ = roles(s)
        assert len(centres) == 6 and len(pruned) == 3
        assert set(centres) == set(row.topk(6).indices.tolist())
        assert set(pruned) == set((-row).topk(3).indices.tolist())


def test_ties_are_broken_by_index_and_counts_stay_exact():
    # all four tokens tie: centres are the lowest indices, pruned the highest
    keep, prune = select_tokens(torch.ones(1, 4), num_keep=2, num_prune=1,
                                ranking='layer')
    assert keep.tolist() == [[True, True, False, False]]
    assert prune.tolist() == [[False, False, False, True]]
    # ties across layers in global ranking: the earlier layer ranks first
    # (layer 0 takes both centres, so layer 1 gets its first token as its
    # one centre) and the later layer's last tokens are pruned
    keep, prune = select_tokens(torch.ones(2, 4), num_keep=1, num_prune=1,
                                ranking='global')
    assert keep.tolist() == [[True, True, False, False],
                             [True, False, False, False]]
    assert prune.tolist() == [[False] * 4, [False, False, True, True]]


def test_a_layer_left_without_centres_gets_its_best_token():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6], [0.5, 0.2, 0.4, 0.3]])
    keep, prune = select_tokens(scores, num_keep=2, num_prune=1,
                                ranking='global')
    # the 4 highest are all in layer 0; layer 1 gets its best token, 0
    assert keep.tolist() == [[True] * 4, [True, False, False, False]]
    # the 2 lowest (0.2, 0.3) are pruned
    assert prune.tolist() == [[False] * 4, [False, True, False, True]]
    config = layers([0, 1], num_layers=2, keep_rate=0.5, prune_rate=0.25)
    s0, s1 = search_structures(scores, config, (2, 2), placement='score')
    assert (s0.num_groups, s0.num_merged, s0.num_pruned) == (4, 0, 0)
    assert (s1.num_groups, s1.num_merged, s1.num_pruned) == (1, 1, 2)


@pytest.mark.parametrize('keep_rate,prune_rate', [(1.0, 0.0), (0.5, 0.5)])
def test_layers_without_merged_tokens_are_valid(keep_rate, prune_rate):
    scores = torch.rand(1, 6, generator=torch.Generator().manual_seed(3))
    config = layers([0], num_layers=1, keep_rate=keep_rate,
                    prune_rate=prune_rate)
    (s, ) = search_structures(scores, config, (2, 3), 'layer',
                              placement='score')
    assert s.num_merged == 0
    assert s.num_groups == int(keep_rate * 6)
    assert s.tokens_per_group().tolist() == [1] * s.num_groups


def test_span_scores_are_averaged_over_the_span():
    g = torch.Generator().manual_seed(4)
    scores = torch.rand(4, 6, generator=g)
    config = PMConfig.from_dict(
        dict(mode='span', spans=[(0, 1), (2, 3)], keep_rate=0.5), 4)
    s0, s1 = search_structures(scores, config, (2, 3), 'layer',
                               placement='score')
    for s, rows in ((s0, scores[0:2]), (s1, scores[2:4])):
        mean = rows.mean(dim=0)
        assert set(s.centre.tolist()) == set(mean.topk(3).indices.tolist())
        merged = (s.weight != 1) & (s.group >= 0)
        centre_of = s.centre[s.group[merged]]
        torch.testing.assert_close(s.weight[merged],
                                   mean[merged] / mean[centre_of])


def test_all_zero_scores_are_refused_with_a_reason():
    scores = torch.rand(3, 6)
    scores[1] = 0
    with pytest.raises(ValueError, match='all zero'):
        search_structures(scores, layers([0, 1], num_layers=3), (2, 3))
    # a zero layer that is not compressed does not matter
    search_structures(scores, layers([0, 2], num_layers=3), (2, 3))


@pytest.mark.parametrize('change,message', [
    (dict(keep_rate=0.0), 'keep_rate'),
    (dict(keep_rate=1.5), 'keep_rate'),
    (dict(prune_rate=1.0), 'prune_rate'),
    (dict(keep_rate=0.7, prune_rate=0.4), 'keep_rate \\+ prune_rate'),
])
def test_bad_rates_are_refused_before_any_work(change, message):
    config = dataclasses.replace(layers([0]), **change)
    with pytest.raises(ValueError, match=message):
        search_structures(torch.rand(4, 6), config, (2, 3))


def test_bad_scores_and_ranking_are_refused():
    config = layers([0, 1])
    with pytest.raises(ValueError, match='shape'):
        search_structures(torch.rand(4, 5), config, (2, 3))
    with pytest.raises(ValueError, match='non-negative'):
        search_structures(-torch.rand(4, 6), config, (2, 3))
    with pytest.raises(ValueError, match='ranking'):
        search_structures(torch.rand(4, 6), config, (2, 3), 'best')
