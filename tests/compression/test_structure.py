"""Compression structures and the merge/reconstruct arithmetic, alone."""
import pytest
import torch

from mmseg_pm.compression import (CompressionStructure, TokenCompressor,
                                  build_structure, lattice_centres,
                                  lattice_structure, merge_matrix,
                                  nearest_rule_groups, reconstruct_matrix,
                                  reconstruct_weights, row_rule_groups)
from mmseg_pm.compression.ops import gather_scale, segment_sum



def merge_matrix_oracle(s):
    """The authors' dense (K, N) merge matrix, entry by entry: the weight
    of every token that is not pruned in the row of its window."""
    m = torch.zeros(s.num_groups, s.num_tokens)
    for p in range(s.num_tokens):
        if not s.pruned[p]:
            m[s.group[p], p] = s.weight[p]
    return m

def test_row_rule_by_hand_stays_in_the_centre_row():
    # 4 x 4 grid, centres 0, 3 and 9. Boundary 0|3: midpoint ceil(1.5) = 2.
    # Boundary 3|9: midpoint 6, but row 0 ends at 4, so row 1 (no centre)
    # joins the next centre, 9.
    groups = row_rule_groups(torch.tensor([0, 3, 9]), (4, 4))
    assert groups.tolist() == [0, 0, 1, 1] + [2] * 12


def test_row_rule_non_square_midpoint_ties_go_to_the_later_centre():
    # 2 x 5 grid, centres 0, 2, 7: boundary 0|2 at ceil(1) = 1,
    # 2|7 at min(ceil(4.5) = 5, row end 5) = 5.
    groups = row_rule_groups(torch.tensor([0, 2, 7]), (2, 5))
    assert groups.tolist() == [0, 1, 1, 1, 1, 2, 2, 2, 2, 2]


def test_nearest_rule_by_hand():
    # 3 x 3 grid, centres 0 (0,0) and 8 (2,2): the anti-diagonal ties and
    # goes to the centre first in raster order.
    groups = nearest_rule_groups(torch.tensor([0, 8]), (3, 3))
    assert groups.tolist() == [0, 0, 0, 0, 0, 1, 0, 1, 1]


def test_build_structure_weights_and_pruning():
    scores = torch.tensor([4., 1., 2., 8., 0., 2., 6., 3.])
    s = build_structure((2, 4), centre=[3, 0], pruned=[4], scores=scores)
    assert s.centre.tolist() == [0, 3]
    # boundary 0|3 at ceil(1.5) = 2; row 1 joins centre 3, token 4 pruned
    assert s.group.tolist() == [0, 0, 1, 1, -1, 1, 1, 1]
    expected = torch.tensor([1., 1 / 4, 2 / 8, 1., 0., 2 / 8, 6 / 8, 3 / 8])
    assert torch.allclose(s.weight, expected)
    assert (s.num_groups, s.num_merged, s.num_pruned) == (2, 5, 1)
    assert s.tokens_per_group().tolist() == [2, 5]


def test_zero_score_centre_gives_uniform_weights():
    s = build_structure((1, 4), centre=[0], scores=torch.zeros(4))
    assert s.weight.tolist() == [1., 1., 1., 1.]


@pytest.mark.parametrize('grid,rule', [((4, 4), 'row'), ((3, 7), 'row'),
                                       ((5, 3), 'nearest')])
def test_closed_form_reconstruct_is_the_pseudo_inverse(grid, rule):
    n = grid[0] * grid[1]
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(n, generator=g)
    s = build_structure(grid, order[:n // 3], order[n // 3:n // 3 + 2],
                        torch.rand(n, generator=g) + 0.05, rule=rule)
    m = merge_matrix(s.group, s.weight, s.num_groups).double()
    r = reconstruct_matrix(s.group, reconstruct_weights(
        s.group, s.weight.double(), s.num_groups), s.num_groups)
    assert torch.allclose(r, torch.linalg.pinv(m), atol=1e-10)
    assert torch.allclose(m @ r, torch.eye(s.num_groups, dtype=m.dtype))
    assert torch.equal(merge_matrix(s.group, s.weight, s.num_groups),
                       merge_matrix_oracle(s))


def test_sparse_functions_equal_matrix_products():
    s = build_structure((4, 6), [0, 5, 9, 14, 22], [1, 17],
                        torch.rand(24) + 0.1)
    x = torch.randn(3, 24, 8, dtype=torch.float64)
    w = s.weight.double()
    slot = torch.where(s.group >= 0, s.group, torch.tensor(s.num_groups))
    small = segment_sum(x, slot, w, s.num_groups + 1)[:, :s.num_groups]
    m = merge_matrix(s.group, s.weight, s.num_groups).double()
    assert torch.allclose(small, m @ x)
    r = reconstruct_weights(s.group, w, s.num_groups)
    full = gather_scale(small, s.group.clamp(min=0), r)
    assert torch.allclose(full, torch.linalg.pinv(m) @ small, atol=1e-10)


def test_token_compressor_round_trip_keeps_centres_and_pruned_tokens():
    s = build_structure((3, 4), [0, 6, 11], [3], torch.rand(12) + 0.1)
    comp = TokenCompressor(s, assign='static')
    x = torch.randn(2, 12, 5)
    small, shortcut = comp.merge(x)
    assert small.shape == (2, 3, 5)
    full = comp.reconstruct(small, shortcut)
    assert torch.allclose(full[:, 3], x[:, 3])  # pruned: unchanged
    # M R = I: merging the reconstruction gives the merged tokens back
    assert torch.allclose(comp.merge(full)[0], small, atol=1e-5)
    back = comp.structure()
    assert torch.equal(back.group, s.group) and torch.equal(back.centre,
                                                            s.centre)


def test_lattice_is_regular_and_close_to_keep_rate():
    centres = lattice_centres((32, 32), 0.5)
    assert abs(centres.numel() / 1024 - 0.5) < 0.05
    rows = torch.unique(centres // 32)
    assert torch.all(rows[1:] - rows[:-1] <= 2)
    s = lattice_structure((5, 8), 0.4)
    assert s.num_pruned == 0 and s.num_groups == centres_count((5, 8), 0.4)
    assert lattice_structure((4, 4), 1.0).num_groups == 16


def centres_count(grid, keep):
    return lattice_centres(grid, keep).numel()


@pytest.mark.parametrize('kwargs,match', [
    (dict(group=torch.zeros(5, dtype=torch.long)), 'shape'),
    (dict(centre=torch.tensor([2, 0])), 'increasing'),
    (dict(group=torch.tensor([0, 0, 1, 1, 3, 1])), r'\[-1, 2\)'),
    (dict(group=torch.tensor([1, 0, 1, 1, 1, 1])), 'its own group'),
    (dict(weight=torch.tensor([1., 1., 1., 1., 1., float('nan')])), 'finite'),
    (dict(group=torch.tensor([0, -1, 1, 1, 1, 1])), 'pruned tokens'),
])
def test_inconsistent_structures_are_refused(kwargs, match):
    good = dict(grid=(2, 3), group=torch.tensor([0, 0, 1, 1, 1, 1]),
                centre=torch.tensor([0, 2]), weight=torch.ones(6))
    CompressionStructure(**good)
    with pytest.raises(ValueError, match=match):
        CompressionStructure(**dict(good, **kwargs))


def test_build_structure_refuses_bad_input():
    with pytest.raises(ValueError, match='both a centre and pruned'):
        build_structure((2, 2), [0, 1], pruned=[1])
    with pytest.raises(ValueError, match='unique'):
        build_structure((2, 2), [0, 0])
    with pytest.raises(ValueError, match='non-negative'):
        build_structure((2, 2), [0], scores=torch.tensor([1., -1., 0., 0.]))
    with pytest.raises(ValueError, match='assignment rule'):
        build_structure((2, 2), [0], rule='spiral')
