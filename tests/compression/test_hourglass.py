"""Hourglass's clustering and reconstruction against straightforward
references: loops over tokens and clusters, full distance matrices,
torch's own adaptive pooling and nearest resizing, no locality tricks."""
import pytest
import torch
import torch.nn.functional as F

from mmseg_pm.compression.hourglass import (
    hard_assignment, initial_cells, pooling_matrix, reconstruction_weights,
    soft_kmeans, temperature_scale, window_mask)

GRIDS = [((6, 9), (4, 3)), ((5, 5), (2, 2)), ((7, 4), (3, 4)),
         ((8, 8), (8, 8))]


@pytest.mark.parametrize('grid,cells', GRIDS)
def test_pooling_and_initial_cells_are_torchs(grid, cells):
    f = torch.randn(2, 3, *grid)
    pooled = F.adaptive_avg_pool2d(f, cells).flatten(2).transpose(1, 2)
    ours = pooling_matrix(grid, cells) @ f.flatten(2).transpose(1, 2)
    assert (ours - pooled).abs().max() <= 1e-6
    labels = torch.arange(cells[0] * cells[1], dtype=torch.float).view(
        1, 1, *cells)
    nearest = F.interpolate(labels, size=grid, mode='nearest').flatten()
    rows, cols = initial_cells(grid, cells)
    assert torch.equal(rows * cells[1] + cols, nearest.long())


def reference_kmeans(f, cells, grid, window, iters, t):
    """One image, loops: token n sees cluster k when k's cell is within
    window // 2 rows and columns of n's initial cell."""
    n_tokens = f.shape[0]
    h, w = cells
    r = window // 2
    init = F.adaptive_avg_pool2d(f.T.reshape(1, -1, *grid), cells)
    c = init.flatten(2)[0].T.clone()
    home = F.interpolate(torch.arange(h * w, dtype=torch.float).view(
        1, 1, h, w), size=grid, mode='nearest').flatten().long()
    visible = torch.zeros(n_tokens, h * w, dtype=torch.bool)
    for n in range(n_tokens):
        for k in range(h * w):
            visible[n, k] = (abs(home[n] // w - k // w) <= r and
                             abs(home[n] % w - k % w) <= r)
    for _ in range(iters):
        a = torch.zeros(n_tokens, h * w, dtype=torch.float64)
        for n in range(n_tokens):
            logits = torch.tensor([-t * ((f[n] - c[k]) ** 2).sum()
                                   if visible[n, k] else -float('inf')
                                   for k in range(h * w)],
                                  dtype=torch.float64)
            a[n] = logits.softmax(0)
        c = torch.stack([(a[:, k, None] * f).sum(0) / a[:, k].sum()
                         for k in range(h * w)])
    hard = torch.tensor([min((k for k in range(h * w) if visible[n, k]),
                             key=lambda k: ((f[n] - c[k]) ** 2).sum())
                         for n in range(n_tokens)])
    return c, visible, hard


@pytest.mark.parametrize('grid,cells', GRIDS[:3])
@pytest.mark.parametrize('window', [1, 3])
def test_soft_kmeans_equals_the_loop_reference(grid, cells, window):
    torch.manual_seed(0)
    f = torch.randn(2, grid[0] * grid[1], 5, dtype=torch.float64)
    mask = window_mask(grid, cells, window)
    t = torch.tensor([[[0.3]], [[1.2]]], dtype=torch.float64)
    init = pooling_matrix(grid, cells).double() @ f
    clusters = soft_kmeans(f, init, mask, 3, t)
    labels = hard_assignment(f, clusters, mask)
    for b in range(2):
        ref, visible, hard = reference_kmeans(f[b], cells, grid, window, 3,
                                              float(t[b]))
        assert torch.equal(mask, visible)
        assert (clusters[b] - ref).abs().max() <= 1e-7
        assert torch.equal(labels[b], hard)
    # the window is real: a 1-cell window gives other clusters than 3
    if window == 1:
        wide = soft_kmeans(f, init, window_mask(grid, cells, 3), 3, t)
        assert (wide - clusters).abs().max() > 1e-3


def reference_weights(f, c, k, t, norm):
    """One image, full distance matrix, explicit top-k by sorting."""
    d = torch.cdist(f, c) ** 2
    weight = torch.zeros_like(d)
    for n in range(f.shape[0]):
        order = d[n].argsort()[:k]
        weight[n, order] = torch.exp(-t * d[n, order])
    if norm == 'l2':
        return weight / weight.norm(dim=1, keepdim=True)
    return weight / weight.sum(1, keepdim=True)


@pytest.mark.parametrize('norm', ['sum', 'l2'])
def test_reconstruction_weights_equal_the_reference(norm):
    torch.manual_seed(1)
    f = torch.randn(2, 30, 6, dtype=torch.float64)
    c = torch.randn(2, 12, 6, dtype=torch.float64)
    t = torch.tensor([[[0.1]], [[0.5]]], dtype=torch.float64)
    ours = reconstruction_weights(f, c, 4, t, norm)
    for b in range(2):
        ref = reference_weights(f[b], c[b], 4, float(t[b]), norm)
        assert (ours[b] - ref).abs().max() <= 1e-10
    assert ((ours > 0).sum(-1) == 4).all()
    # k above the number of clusters: every cluster counts
    assert ((reconstruction_weights(f, c, 50, t) > 0).sum(-1) == 12).all()
    # far tokens do not underflow to 0/0 (weights from logits - max)
    far = reconstruction_weights(f * 1e3, c, 4, t)
    assert torch.isfinite(far).all()
    assert torch.allclose(far.sum(-1), torch.ones(2, 30, dtype=far.dtype))


def test_relative_temperature_is_scale_free():
    """Scaling the features by s leaves relative-temperature clustering
    and weights unchanged (clusters scale by s); absolute ones change."""
    torch.manual_seed(2)
    grid, cells = (6, 6), (3, 3)
    f = torch.randn(1, 36, 8, dtype=torch.float64)
    mask = window_mask(grid, cells, 3)
    pool = pooling_matrix(grid, cells).double()

    def run(x, relative):
        t = 2.0 / temperature_scale(x, relative)
        c = soft_kmeans(x, pool @ x, mask, 4, t)
        return c, reconstruction_weights(x, c, 5, t)

    c1, w1 = run(f, True)
    c2, w2 = run(10 * f, True)
    assert (c2 - 10 * c1).abs().max() <= 1e-8
    assert (w2 - w1).abs().max() <= 1e-10
    assert temperature_scale(f, True).item() == pytest.approx(
        (f ** 2).sum(-1).mean().item())
    _, a1 = run(f, False)
    _, a2 = run(10 * f, False)
    assert (a2 - a1).abs().max() > 1e-2
