"""ops.py's pure functions against loops and dense matrices written out
here: segment sums, scaled gathers, batched row indices, prefix tokens and
the sparse merge/reconstruct against the explicit M and R, and the
exported merge (window tables) against the segment sum."""
import pytest
import torch

from mmseg_pm.compression.ops import (batched_rows, gather_scale,
                                      merge_matrix, reconstruct_matrix,
                                      segment_sum, tabled_segment_sum,
                                      weight_with_prefix, window_tables,
                                      with_prefix)
from tests.helpers import pruned_structure


def test_batched_rows_index_the_flattened_batch():
    index = torch.tensor([2, 0, 1, 1])
    rows = batched_rows(index, batch=3, rows=5)
    assert rows.tolist() == [2, 0, 1, 1, 7, 5, 6, 6, 12, 10, 11, 11]
    y = torch.randn(3, 5, 4)
    torch.testing.assert_close(y.reshape(15, 4)[rows].view(3, 4, 4),
                               y[:, index])


def test_segment_sum_equals_a_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    index = torch.tensor([1, 0, 1, 3, 3, 0])
    weight = torch.rand(6, generator=g, dtype=torch.float64)
    expected = torch.zeros(2, 4, 3, dtype=torch.float64)
    for b in range(2):
        for p in range(6):
            expected[b, index[p]] += weight[p] * x[b, p]
    out = segment_sum(x, index, weight, num_groups=4)
    torch.testing.assert_close(out, expected)
    assert out[:, 2].abs().sum() == 0  # a window with no member stays 0
    rows = batched_rows(index, 2, 4)  # the precomputed rows give the same
    torch.testing.assert_close(segment_sum(x, index, weight, 4, rows=rows),
                               expected)


@pytest.mark.parametrize('needs_grad', [False, True])
def test_gather_scale_equals_a_loop_with_and_without_autograd(needs_grad):
    g = torch.Generator().manual_seed(1)
    y = torch.randn(2, 3, 4, generator=g, dtype=torch.float64,
                    requires_grad=needs_grad)
    index = torch.tensor([2, 0, 0, 1, 2])
    weight = torch.rand(5, generator=g, dtype=torch.float64)
    expected = torch.stack([torch.stack([weight[p] * y[b, index[p]]
                                         for p in range(5)])
                            for b in range(2)])
    out = gather_scale(y, index, weight)
    torch.testing.assert_close(out, expected)
    if needs_grad:  # out of place: the gradient flows back to y
        out.sum().backward()
        counts = torch.zeros(3, dtype=torch.float64).index_add_(
            0, index, weight)
        torch.testing.assert_close(y.grad, counts[None, :, None].expand(
            2, 3, 4))


def test_with_prefix_puts_leading_tokens_in_their_own_slots():
    index = torch.tensor([1, 0, 2])
    assert with_prefix(index, 0) is index
    assert with_prefix(index, 2).tolist() == [0, 1, 3, 2, 4]
    weight = torch.tensor([0.5, 2.0, 0.0])
    assert weight_with_prefix(weight, 0) is weight
    assert weight_with_prefix(weight, 1).tolist() == [1.0, 0.5, 2.0, 0.0]


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_sparse_merge_and_reconstruct_equal_the_matrices(seed):
    s = pruned_structure(seed=seed)  # centres, merged and pruned tokens
    k, n = s.num_groups, s.num_tokens
    weight = s.weight.double()
    m = merge_matrix(s.group, weight, k)
    assert m.shape == (k, n)
    for p in range(n):  # M holds weight[p] at (group[p], p), else 0
        column = torch.zeros(k, dtype=torch.float64)
        if s.group[p] >= 0:
            column[s.group[p]] = weight[p]
        assert torch.equal(m[:, p], column), p
    r = reconstruct_matrix(s.group, weight, k)
    assert torch.equal(r, m.t())

    x = torch.randn(2, n, 5, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(seed))
    slot = torch.where(s.group >= 0, s.group, torch.tensor(k))
    torch.testing.assert_close(
        segment_sum(x, slot, weight, k + 1)[:, :k], m @ x)
    y = torch.randn(2, k, 5, dtype=torch.float64)
    gather = s.group.clamp(min=0)  # pruned tokens read window 0 ...
    restored = gather_scale(y, gather, weight)  # ... with weight 0
    torch.testing.assert_close(restored, r @ y)
    assert restored[:, s.group < 0].abs().sum() == 0


def test_window_tables_hold_every_kept_token_once_by_size_class():
    #        window: 0  1  0  -  2  2  2  0  2  2  (- pruned)
    group = torch.tensor([0, 1, 0, -1, 2, 2, 2, 0, 2, 2])
    tables, order = window_tables(group)
    # sizes 3, 1, 5: classes of width 1 (window 1), 4 (window 0), 8 (2)
    assert [t.tolist() for t in tables] == [
        [[1]], [[0, 2, 7, -1]], [[4, 5, 6, 8, 9, -1, -1, -1]]]
    stacked_windows = [1, 0, 2]  # window of each stacked row
    assert [stacked_windows[i] for i in order.tolist()] == [0, 1, 2]
    with pytest.raises(ValueError, match='a window without tokens'):
        window_tables(torch.tensor([0, 2, 2, -1]))  # window 1 is empty


@pytest.mark.parametrize('seed,num_prefix', [(0, 0), (1, 1), (2, 2)])
def test_tabled_segment_sum_equals_the_segment_sum(seed, num_prefix):
    s = pruned_structure(seed=seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, num_prefix + s.num_tokens, 4, generator=g,
                    dtype=torch.float64)
    weight = s.weight.double()
    tables, order = window_tables(s.group)
    out = tabled_segment_sum(x, weight, tables, order, num_prefix)
    index = with_prefix(s.group.clamp(min=0), num_prefix)
    expected = segment_sum(x, index, weight_with_prefix(weight, num_prefix),
                           num_prefix + s.num_groups)
    torch.testing.assert_close(out, expected)
