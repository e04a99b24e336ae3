"""Content-aware assignment (pure tensor code): the candidate table, the
per-image argmax against the gather of every candidate, the sparse
per-image merge and reconstruct against the dense per-image matrices, and
k = 1 = static."""
import pytest
import torch
import torch.nn.functional as F

from mmseg_pm.compression import build_structure
from mmseg_pm.compression.content import assign_rows, candidate_windows
from mmseg_pm.compression.unit import TokenCompressor
from tests.helpers import pruned_structure

GRID = (3, 5)


def gather_every_candidate(x, centre, candidates):
    """The oracle: (B, N) assignment of patch tokens ``x`` (B, N, C), every
    token against the normalised centres of all its k * k candidates
    gathered as one (B, N, k * k, C) tensor, and an argmax (ties to the
    first candidate)."""
    b, n, c = x.shape
    centres = F.normalize(x.index_select(1, centre), dim=-1)
    near = centres.index_select(1, candidates.flatten()).view(b, n, -1, c)
    similarity = torch.matmul(near, x.unsqueeze(-1)).squeeze(-1)
    choice = similarity.argmax(-1, keepdim=True)
    return candidates.expand(b, -1, -1).gather(2, choice).squeeze(-1)


def windows(comp, context, batch, num_prefix=1):
    """(B, N) window of every patch token in a merge's ``context`` (pruned
    tokens: window 0, where they sit with weight 0)."""
    plan = comp._plan(batch, num_prefix, context.rows.device)
    slots = context.rows.view(batch, -1) - plan.offsets
    return slots[:, num_prefix:] - num_prefix


def assignment(comp, x, num_prefix=1, gathered=False):
    """(B, N) window of every patch token of ``x`` by the unit's plan: the
    sampled product over its pairs (eager CPU) or, ``gathered``, the
    gather and batched product (compiled, exported, other devices)."""
    plan = comp._plan(x.shape[0], num_prefix, x.device)
    assert plan.assignment.pairs is not None  # planned on the CPU
    rows = assign_rows(x, plan.assignment._replace(pairs=None) if gathered
                       else plan.assignment)
    slots = rows.view(x.shape[0], -1) - plan.offsets
    return slots[:, num_prefix:] - num_prefix


def uniform(structure):
    """The structure with weight 1 on every kept token (content-aware
    windows merge by plain means)."""
    return build_structure(structure.grid, structure.centre,
                           structure.group < 0, None)


def test_candidates_are_the_windows_of_the_kept_neighbours():
    s = pruned_structure()
    h, w = s.grid
    is_centre = torch.zeros(h * w, dtype=torch.bool)
    is_centre[s.centre] = True
    table = candidate_windows(s.group, is_centre, s.grid, 3)
    assert table.shape == (h * w, 9)
    for p in range(h * w):
        own = int(s.group[p].clamp(min=0))
        if is_centre[p] or s.group[p] < 0:
            assert set(table[p].tolist()) == {own}
            continue
        y, x = divmod(p, w)
        near = {int(s.group[yy * w + xx]) for yy in range(y - 1, y + 2)
                for xx in range(x - 1, x + 2)
                if 0 <= yy < h and 0 <= xx < w}
        assert table[p, 0] == own  # ties go to the static window
        assert set(table[p].tolist()) == (near - {-1}) | {own}


@pytest.mark.parametrize('k', [0, 2, -1])
def test_even_or_empty_neighbourhood_is_refused(k):
    with pytest.raises(ValueError, match='odd'):
        TokenCompressor(pruned_structure(), assign='content',
                        neighbourhood=k)


def test_assignment_is_the_most_similar_candidate_centre():
    s = pruned_structure()
    comp = TokenCompressor(s, assign='content')
    x = torch.randn(3, 15, 8, dtype=torch.float64)
    table = candidate_windows(comp.group, comp.is_centre, s.grid, 3)
    assign = assignment(comp.double(), torch.cat((x[:, :1], x), 1))
    for b in range(3):
        for p in range(15):
            best = max(set(table[p].tolist()), key=lambda k: float(
                torch.cosine_similarity(x[b, p], x[b, s.centre[k]], 0)))
            assert assign[b, p] == best
        assert torch.equal(assign[b, s.centre], torch.arange(s.num_groups))


def trained(comp):
    """Uneven merge and reconstruct weights (as after fine-tuning)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        comp.merge_weight.mul_(torch.rand(15, generator=g) + 0.5)
        comp.reconstruct_weight.mul_(torch.rand(15, generator=g) + 0.5)
    return comp


def run_unit(comp, x):
    x = x.clone().requires_grad_()
    merged, context = comp.merge(x, num_prefix=1)
    out = comp.reconstruct(merged.tanh(), context, num_prefix=1)
    (out * torch.linspace(-1, 1, x.shape[-1], dtype=x.dtype)).sum().backward()
    slots = context.slots[:, 1:] - 1 if context.slots is not None \
        else windows(comp, context, x.shape[0])
    return (out.detach(), x.grad, comp.merge_weight.grad,
            comp.reconstruct_weight.grad, slots)


@pytest.mark.parametrize('reconstruct', ['residual', 'pinv'])
def test_sparse_equals_the_per_image_matrices_in_value_and_gradient(
        reconstruct):
    x = torch.randn(3, 16, 8)
    results = [run_unit(trained(TokenCompressor(
        pruned_structure(), impl=impl, reconstruct=reconstruct,
        assign='content')), x) for impl in ('sparse', 'dense')]
    for a, b in zip(*results):
        assert (a.double() - b.double()).abs().max() <= 1e-5
    assert (results[0][2] != 0).any()  # gradients reach the weights


@pytest.mark.parametrize('reconstruct', ['residual', 'pinv'])
def test_each_image_of_a_batch_is_merged_as_if_alone(reconstruct):
    comp = trained(TokenCompressor(pruned_structure(), reconstruct=reconstruct,
                                   assign='content'))
    x = torch.randn(4, 16, 8)
    with torch.no_grad():
        merged, context = comp.merge(x, 1)
        batch = comp.reconstruct(merged * 2, context, 1)
        for b in range(4):
            m, c = comp.merge(x[b:b + 1], 1)
            assert (merged[b] - m[0]).abs().max() <= 1e-6
            assert torch.equal(windows(comp, context, 4)[b],
                               windows(comp, c, 1)[0])
            assert (batch[b] - comp.reconstruct(m * 2, c, 1)[0]
                    ).abs().max() <= 1e-6
    # windows follow the image: not every image has the same assignment
    every = windows(comp, context, 4)
    assert not all(torch.equal(every[0], a) for a in every)


@pytest.mark.parametrize('reconstruct', ['residual', 'pinv'])
@pytest.mark.parametrize('impl', ['sparse', 'dense'])
def test_neighbourhood_of_one_is_the_static_assignment(reconstruct, impl):
    s = uniform(pruned_structure())
    x = torch.randn(2, 16, 8, dtype=torch.float64)
    static = TokenCompressor(s, impl, reconstruct=reconstruct,
                             assign='static').double()
    content = TokenCompressor(s, impl, reconstruct=reconstruct,
                              assign='content', neighbourhood=1).double()
    for a, b in zip(run_unit(static, x)[:2], run_unit(content, x)[:2]):
        assert (a - b).abs().max() <= 1e-6  # static weights: float32


def test_a_lone_centre_keeps_its_own_token_and_pruned_tokens_pass():
    s = pruned_structure()
    comp = TokenCompressor(s, assign='content')
    x = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(4))
    merged, context = comp.merge(x, 1)
    out = comp.reconstruct(merged + 1, context, 1)
    for b in range(2):
        size = torch.bincount(windows(comp, context, 2)[b][s.group >= 0],
                              minlength=s.num_groups)
        for k, c in enumerate(s.centre.tolist()):
            if size[k] == 1:
                assert torch.allclose(merged[b, 1 + k], x[b, 1 + c])
    pruned = torch.cat((torch.tensor([False]), s.group < 0))
    assert torch.equal(out[:, pruned], x[:, pruned])
    # (merged + 1) - merged is 1 to float32 rounding of merged
    assert torch.allclose(out[:, ~pruned], x[:, ~pruned] + 1, atol=1e-6)


def random_unit(grid=(12, 16), keep=0.5, prune=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    order = torch.randperm(n, generator=g)
    k, p = int(keep * n), int(prune * n)
    return TokenCompressor(build_structure(grid, order[:k].sort().values,
                                           order[k:k + p], None))


def assignments(comp, x, num_prefix=1):
    """The unit's assignment by both formulations, and one image at a
    time."""
    return (assignment(comp, x, num_prefix),
            assignment(comp, x, num_prefix, gathered=True),
            torch.cat([assignment(comp, x[b:b + 1], num_prefix)
                       for b in range(x.shape[0])]))


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('keep', [0.7, 0.5, 0.2])
def test_assignment_equals_the_gather_of_every_candidate(keep, seed):
    comp = random_unit(keep=keep, seed=seed)
    x = torch.randn(4, 1 + 192, 32, generator=torch.Generator().manual_seed(
        seed))
    table = candidate_windows(comp.group, comp.is_centre, (12, 16), 3)
    expected = gather_every_candidate(x[:, 1:], comp.structure().centre,
                                      table)
    for got in assignments(comp, x):
        assert torch.equal(got, expected)
    # fewer pairs than k * k per token: only merged tokens, distinct windows
    assert comp.num_similarity_pairs < 9 * int((~comp.is_centre).sum())


def test_exact_ties_go_to_the_own_window_then_to_the_scan_order():
    comp = random_unit(keep=0.5, prune=0.0, seed=1)
    s = comp.structure()
    table = candidate_windows(comp.group, comp.is_centre, (12, 16), 3)
    x = torch.randn(1, 193, 16, generator=torch.Generator().manual_seed(0))
    # every centre the same vector: every candidate ties, the own wins
    x[:, 1 + s.centre] = torch.randn(16)
    for got in assignments(comp, x):
        assert torch.equal(got[0], comp.group)
    # two neighbouring windows' centres equal and closest: the earlier one
    # of the 3 x 3 scan wins, as in the gather of every candidate
    x = torch.randn(1, 193, 16, generator=torch.Generator().manual_seed(1))
    ties = 0
    for p in torch.nonzero(~comp.is_centre).flatten().tolist():
        distinct = list(dict.fromkeys(table[p].tolist()))
        if len(distinct) >= 3:
            a, b = distinct[1], distinct[2]
            x[0, 1 + s.centre[b]] = x[0, 1 + s.centre[a]]
            x[0, 1 + p] = x[0, 1 + s.centre[a]]
            expected = gather_every_candidate(x[:, 1:], s.centre, table)
            for got in assignments(comp, x):
                assert got[0, p] == a == expected[0, p]
            ties += 1
            if ties == 5:
                break
    assert ties == 5


def test_assignment_is_float32_in_a_bf16_model_and_under_autocast():
    comp = random_unit(keep=0.5, seed=2)
    x = torch.randn(2, 193, 64, generator=torch.Generator().manual_seed(2))
    low = x.bfloat16()
    expected = gather_every_candidate(
        low.float()[:, 1:], comp.structure().centre,
        candidate_windows(comp.group, comp.is_centre, (12, 16), 3))
    for got in assignments(comp, low):  # a bf16 model's tokens
        assert torch.equal(got, expected)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        for got in assignments(comp, low.float()):
            assert torch.equal(got, expected)
    bf16 = comp.bfloat16()
    with torch.no_grad():
        merged, context = bf16.merge(low, 1)
    assert merged.dtype == torch.bfloat16
    assert torch.equal(windows(bf16, context, 2), expected)


@pytest.mark.parametrize('reconstruct', ['residual', 'pinv'])
def test_exported_merge_equals_the_eager_one(reconstruct, monkeypatch):
    """The gather-only merge over every window's possible members (what is
    exported) against the segment sum, with uneven trained weights."""
    comp = trained_unit(random_unit(keep=0.5, seed=3), reconstruct)
    x = torch.randn(3, 193, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        merged, context = comp.merge(x, 1)
        eager = comp.reconstruct(merged * 2, context, 1)
        monkeypatch.setattr(torch.compiler, 'is_exporting', lambda: True)
        tabled, tabled_context = comp.merge(x, 1)
        assert tabled_context.formulation == 'export'
        exported = comp.reconstruct(tabled * 2, tabled_context, 1)
    assert torch.equal(context.rows, tabled_context.rows)
    assert (merged - tabled).abs().max() <= 1e-5
    assert (eager - exported).abs().max() <= 1e-5


def trained_unit(comp, reconstruct):
    """``comp``'s structure with ``reconstruct`` and uneven weights."""
    unit = TokenCompressor(comp.structure(), reconstruct=reconstruct)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for w in (unit.merge_weight, unit.reconstruct_weight):
            w.mul_(torch.rand(w.shape, generator=g) + 0.5)
    return unit
