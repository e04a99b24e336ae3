"""MPM's pure pieces (mmseg_pm/compression/mpm.py) against a straightforward
Python loop over the authors' rule: nearest neighbours, mutual pairs, plain
means in raster order, composed maps and the full grid."""
import pytest
import torch
import torch.nn.functional as F

from mmseg_pm.compression.mpm import (MPM, compose_maps, merge_by_map,
                                      mutual_partners, pair_assign)


class Identity:
    """A block that adds nothing: run_block then returns exactly what the
    merge made."""

    def __call__(self, x, bias=None):
        return x


# ------------------------------------------------------------- reference
def cos(a, b):
    return float(F.cosine_similarity(a.double(), b.double(), dim=0))


def reference_insertion(tokens, groups):
    """The authors' rule read literally, one image: ``tokens`` a list of
    (C,) current patch tokens in order, ``groups`` the original positions
    each holds. Every token's nearest other token (cosine, the first on a
    tie); i and b(i) pair when b(b(i)) = i; a pair becomes the plain mean
    of its two tokens at the place of its lower index; the others stay."""
    n = len(tokens)
    nearest = []
    for i in range(n):
        best, arg = -float('inf'), i
        for j in range(n):
            if j != i and cos(tokens[i], tokens[j]) > best:
                best, arg = cos(tokens[i], tokens[j]), j
        nearest.append(arg)
    new_tokens, new_groups = [], []
    for i in range(n):
        j = nearest[i]
        if j != i and nearest[j] == i:
            if i < j:
                new_tokens.append((tokens[i] + tokens[j]) / 2)
                new_groups.append(groups[i] + groups[j])
        else:
            new_tokens.append(tokens[i])
            new_groups.append(groups[i])
    return new_tokens, new_groups


def reference_full_grid(tokens, groups, num_positions):
    """Every original position takes the value of the token holding it."""
    grid = torch.empty(num_positions, tokens[0].shape[0])
    for token, group in zip(tokens, groups):
        grid[group] = token
    return grid


def reference_map(groups, num_positions, prefix=1):
    """The source map the groups make (class token at 0)."""
    source = list(range(prefix))
    owner = {p: k for k, group in enumerate(groups) for p in group}
    return torch.tensor(source + [prefix + owner[p]
                                  for p in range(num_positions)])


def features(n, seed, channels=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, generator=g)


# ------------------------------------------------------------- pure
@pytest.mark.parametrize('seed', range(4))
def test_one_insertion_equals_the_authors_rule(seed):
    x = features(23, seed)
    tokens, groups = reference_insertion(list(x), [[i] for i in range(23)])
    partner = mutual_partners(x[None])
    assign, counts = pair_assign(partner)
    merged = merge_by_map(x[None], assign, counts)
    assert int(counts) == len(tokens) < 23
    assert torch.allclose(merged[0], torch.stack(tokens), atol=1e-6)
    expected = torch.tensor([next(k for k, g in enumerate(groups) if i in g)
                             for i in range(23)])
    assert torch.equal(assign[0], expected)
    # pairs are mutual and disjoint; unpaired tokens are their own partner
    assert torch.equal(partner[0][partner[0]], torch.arange(23))


def test_ties_go_to_the_first_index_and_two_tokens_always_pair():
    e1, e2 = torch.eye(4)[0], torch.eye(4)[1]
    # tokens 1 and 2 are as close to token 0 as can be; token 3 is as far
    # from all three: b = (1, 0, 0, 0), so only (0, 1) pair
    x = torch.stack((e1, 2 * e1, 3 * e1, e2))[None]
    assert mutual_partners(x).tolist() == [[1, 0, 2, 3]]
    assign, counts = pair_assign(mutual_partners(x))
    assert assign.tolist() == [[0, 0, 1, 2]] and counts.tolist() == [3]
    merged = merge_by_map(x, assign, counts)
    assert torch.equal(merged[0], torch.stack((1.5 * e1, 3 * e1, e2)))
    two = features(2, 0)[None]
    assert mutual_partners(two).tolist() == [[1, 0]]
    one = features(1, 0)[None]
    assert mutual_partners(one).tolist() == [[0]]
    assert pair_assign(mutual_partners(one))[1].tolist() == [1]


@pytest.mark.parametrize('n', [2, 3, 7, 16, 33])
def test_at_most_half_the_tokens_go(n):
    for seed in range(5):
        x = features(n, seed)[None]
        _, counts = pair_assign(mutual_partners(x))
        assert (n + 1) // 2 <= int(counts) < n  # the closest pair is mutual


def test_padding_never_pairs_nor_enters_a_mean():
    """Image 0 of a padded batch pairs and merges as it does alone."""
    x = torch.stack((features(23, 0), features(23, 1)))
    valid = torch.ones(2, 23, dtype=torch.bool)
    valid[0, 17:] = False
    x[0, 17:] = x[0, :6]  # padding that would pair if it were seen
    partner = mutual_partners(x, valid)
    alone = mutual_partners(x[:1, :17])
    assert torch.equal(partner[0, :17], alone[0])
    assert torch.equal(partner[0, 17:], torch.arange(17, 23))
    assign, counts = pair_assign(partner, valid)
    single, single_count = pair_assign(alone)
    assert torch.equal(assign[0, :17], single[0])
    assert (assign[0, 17:] == counts.max()).all()
    assert counts[0] == single_count[0] and counts[0] != counts[1]
    merged = merge_by_map(x, assign, counts, valid)
    n = int(single_count)
    assert merged.shape[1] == int(counts.max())
    assert torch.allclose(merged[0, :n],
                          merge_by_map(x[:1, :17], single, single_count)[0])
    assert (merged[0, n:] == 0).all()


def test_maps_compose():
    first = torch.tensor([[0, 1, 1, 2, 3, 2]])
    second = torch.tensor([[0, 1, 1, 2]])
    assert compose_maps(first, second).tolist() == [[0, 1, 1, 1, 2, 1]]


# ------------------------------------------------------------- reducer
def clustered(n, seed, channels=8):
    """Tokens around a few centres: several insertions keep pairing, and
    the second pairs tokens holding different numbers of positions."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, channels, generator=g)
    member = torch.randint(0, 4, (n, ), generator=g)
    return centres[member] + 0.4 * torch.randn(n, channels, generator=g)


@pytest.mark.parametrize('seed', range(3))
def test_successive_insertions_equal_the_authors_rule(seed):
    """Three insertions through the reducer with blocks that add nothing:
    the tokens (plain means of current tokens, not size-weighted), their
    order, the composed source map and the full grid are the loop's."""
    n, layers = 30, (0, 1, 3)
    patches = clustered(n, seed)
    cls = torch.randn(1, 8)
    x = torch.cat((cls, patches))[None]
    reducer = MPM(layers)
    reducer.trace_source = reducer.trace_counts = True
    state = reducer.start(x, (5, 6))
    tokens, groups = list(patches), [[i] for i in range(n)]
    uneven, counts = False, []
    for i in range(4):
        x, state = reducer.run_block(i, Identity(), x, state)
        if i in layers:
            size = {g[0]: len(g) for g in groups}
            tokens, groups = reference_insertion(tokens, groups)
            # a new group whose two parts hold different numbers of positions
            uneven |= any(len(g) != size[g[0]] and
                          len(g) != 2 * size[g[0]] for g in groups)
        assert x.shape == (1, 1 + len(tokens), 8)
        counts.append(1 + len(tokens))
        assert torch.equal(x[0, 0], cls[0])
        assert torch.allclose(x[0, 1:], torch.stack(tokens), atol=1e-5)
        assert torch.equal(state.source[0], reference_map(groups, n))
        assert torch.equal(reducer.sources[i], state.source)
        grid = reducer.full_grid(i, x, state)
        assert torch.allclose(grid[0, 1:], reference_full_grid(
            tokens, groups, n), atol=1e-5)
    assert uneven  # a 2-token group met a 1-token one: weights would matter
    assert reducer.last_counts[0].tolist() == counts
    assert reducer.tokens_per_block(31, 4) == [31] * 4  # the bound
    assert counts[0] < 31 and counts[3] < counts[2] == counts[1] < counts[0]


def test_plain_mean_not_size_weighted():
    """A token holding two positions paired with one holding one: the new
    token is the mean of the two current tokens (the authors' code
    resets the counts at every insertion)."""
    a, b, c = torch.eye(3)
    # (1, 2) pair first; 3 is nearest to 1, which is not mutual
    x = torch.stack((torch.zeros(3), a, a + 0.1 * b, c + 0.5 * a))[None]
    reducer = MPM((0, 1))
    state = reducer.start(x, (1, 3))
    x, state = reducer.run_block(0, Identity(), x, state)
    assert state.source.tolist() == [[0, 1, 1, 2]]
    x, state = reducer.run_block(1, Identity(), x, state)
    assert state.source.tolist() == [[0, 1, 1, 1]]  # two tokens always pair
    first = (a + a + 0.1 * b) / 2
    assert torch.allclose(x[0, 1], (first + c + 0.5 * a) / 2)
    assert not torch.allclose(x[0, 1], (2 * first + c + 0.5 * a) / 3)


def test_dense_block_and_class_token():
    x = torch.cat((torch.zeros(1, 8), features(10, 0)))[None]
    reducer = MPM((0, ))
    state = reducer.start(x, (2, 5))
    out, _ = reducer.dense_block(0, Identity(), x, state)  # the bypass
    assert torch.equal(out, x)
    no_cls = MPM((0, ), num_prefix=0)
    out, state = no_cls.run_block(0, Identity(), x, no_cls.start(x, (1, 11)))
    assert out.shape[1] < 11 and state.source.max() == out.shape[1] - 1
    assert no_cls.merging_blocks() == [0] and no_cls.blocks(3) == [0, 1, 2]
