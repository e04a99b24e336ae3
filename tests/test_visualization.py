"""Token-map pictures: the pure drawing helpers on hand-made inputs, the
maps a model reports (checked against what its outputs show), and the
command line on a tiny Prune-and-Merge checkpoint."""
from pathlib import Path

import matplotlib
import mmcv
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

import mmseg_pm.models  # noqa: F401
from mmseg_pm.compression import build_structure
from mmseg_pm.models import PMVisionTransformer
from mmseg_pm.visualization import (PALETTE, TokenMap, colour_windows,
                                    model_token_maps, plot_token_maps,
                                    token_map_from_structure, window_edges,
                                    window_overlay)
from tests.helpers import visualize, write_image

matplotlib.use('Agg')
ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / 'configs/synthetic' / \
    'segmenter_vit-tiny_mask_synthetic-ade-64x64.py'


def test_window_edges_follow_group_boundaries():
    # 2 x 3 grid: windows {0, 1}, {2, 5}, pruned 3, alone 4
    group = torch.tensor([0, 0, 1, -1, 2, 1])
    edges = {tuple(map(tuple, s)) for s in window_edges(group, (2, 3))}
    inner = {((2, 0), (2, 1)),  # 0|1 between columns 1 and 2, row 0
             ((1, 1), (1, 2)), ((2, 1), (2, 2)),  # pruned|alone|window
             ((0, 1), (1, 1)), ((1, 1), (2, 1))}  # row 0 over row 1
    border = {((0, 0), (3, 0)), ((3, 0), (3, 2)), ((3, 2), (0, 2)),
              ((0, 2), (0, 0))}
    assert edges == inner | border


def test_neighbouring_windows_get_different_colours():
    structure = build_structure((12, 12), torch.arange(0, 144, 3))
    token_map = token_map_from_structure(structure)
    window = token_map.window
    colour = colour_windows(window, (12, 12))
    cells = window.view(12, 12)
    for a, b in ((cells[:, :-1], cells[:, 1:]), (cells[:-1], cells[1:])):
        differ = a != b
        assert (colour[a[differ]] != colour[b[differ]]).all()
    assert int(colour.max()) < len(PALETTE)


def test_overlay_styles_pruned_alone_and_merged_differently():
    # window 0 = {0, 1}, token 2 alone (a centre without members), 3 pruned
    structure = build_structure((2, 2), torch.tensor([0, 2]),
                                pruned=torch.tensor([3]), rule='nearest')
    token_map = token_map_from_structure(structure, 'block 1')
    rgba = window_overlay(token_map).reshape(4, 4)
    assert rgba[0, 3] > 0 and np.allclose(rgba[0], rgba[1])  # one window
    assert rgba[2, 3] == 0  # alone: no fill
    assert rgba[3, 3] > 0 and np.allclose(rgba[3, :3], rgba[3, 0])  # grey
    assert not np.allclose(rgba[3, :3], rgba[0, :3])
    assert token_map.counts() == dict(tokens=2, merged_windows=1, alone=1,
                                      pruned=1)


def test_plot_has_panels_heat_maps_and_legend(tmp_path):
    s = build_structure((4, 4), torch.tensor([0, 5, 10, 15]),
                        pruned=torch.tensor([3, 12]),
                        scores=torch.rand(16))
    maps = [token_map_from_structure(s, 'block 1'),
            TokenMap((4, 4), torch.arange(16), None, 'dense', 'block 2')]
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)
    fig = plot_token_maps(image, maps, [torch.rand(16), None],
                          'scores: test', 'title')
    titles = [ax.get_title() for ax in fig.axes]
    assert 'block 1: 4 centres, 10 merged, 2 pruned' in titles
    assert 'token scores, block 1' in titles
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {'centre', 'pruned (skips the block)',
            'token kept alone'} <= set(labels)
    out = tmp_path / 'maps.png'
    fig.savefig(out)
    assert mmcv.imread(str(out)).shape[2] == 3


@pytest.mark.parametrize('compression,tokens', [
    (dict(method='tome', layers=[0, 1], r=4), (12, 8)),
    (dict(method='mstm', prune_layers=[0, 1], keep_rate=0.75), (12, 9)),
    (dict(method='algm', local_layer=0, global_layer=1, threshold=0.0),
     (10, 8))])
def test_source_maps_match_the_outputs_the_model_restores(compression,
                                                          tokens):
    torch.manual_seed(0)
    backbone = PMVisionTransformer(
        img_size=64, patch_size=16, embed_dims=32, num_layers=3, num_heads=2,
        out_indices=(0, 1), compression=compression)
    backbone.init_weights()
    backbone.eval()
    x = torch.randn(1, 3, 64, 64)
    maps = model_token_maps(backbone, [0, 1], x)
    with torch.no_grad():
        outs = backbone(x)
    for token_map, out, num in zip(maps, outs, tokens):
        assert token_map.counts()['tokens'] == num
        features = out[0].flatten(1).t()  # (16, C), one row per position
        window = token_map.window
        for k in range(int(window.max()) + 1):
            members = features[window == k]
            assert torch.allclose(members, members[0].expand_as(members))
        firsts = torch.stack([features[window == k][0]
                              for k in range(int(window.max()) + 1)])
        assert torch.cdist(firsts, firsts).add(torch.eye(num)).min() > 0


@pytest.mark.parametrize('assign', ['static', 'content'])
def test_visualize_tool_on_a_pruned_checkpoint(tmp_path, capsys, assign):
    config = tmp_path / 'pm.py'
    config.write_text(
        f"_base_ = ['{BASE}']\n"
        "model = dict(backbone=dict(type='PMVisionTransformer', "
        "embed_dims=32, num_layers=3, num_heads=2, compression=dict("
        f"mode='span', spans=[(0, 0), (1, 2)], assign='{assign}')), "
        "decode_head=dict("
        "in_channels=32, channels=32, embed_dims=32, num_layers=1))\n")
    init_default_scope('mmseg')
    model = MODELS.build(Config.fromfile(str(config)).model)
    model.init_weights()
    scores = torch.rand(3, 64)
    model.backbone.set_structures([
        build_structure((8, 8), scores[0].topk(20).indices,
                        scores[0].topk(6, largest=False).indices, scores[0]),
        build_structure((8, 8), scores[1].topk(30).indices)])
    checkpoint = tmp_path / 'pruned.pth'
    torch.save(dict(state_dict=model.state_dict(),
                    meta=dict(prune_and_merge=dict(scores=scores))),
               checkpoint)
    image = write_image(tmp_path / 'image.png')
    out = tmp_path / 'out' / 'tokens.png'
    maps = visualize(config, checkpoint, image, out, '--layers', '0', '2',
                     '--dpi', '50')
    printed = capsys.readouterr().out
    if assign == 'static':
        assert 'block 0: 20 centres, 38 merged, 6 pruned' in printed
        assert 'block 2 (span 1-2): 30 centres, 34 merged, 0 pruned' in \
            printed
    else:  # the windows of this image around the same centres
        assert 'block 0: 20 centres, windows of this image, 6 pruned' in \
            printed
        assert 'content-aware windows' in printed
        static = model.backbone.structures()[0]
        assert torch.equal(maps[0].group[static.centre],
                           torch.arange(20))
        assert torch.equal(maps[0].group < 0, static.group < 0)
        assert not torch.equal(maps[0].group, static.group)
    assert 'token scores: checkpoint meta' in printed
    assert [m.label for m in maps] == ['block 0', 'block 2 (span 1-2)']
    assert sorted(p.name for p in out.parent.iterdir()) == ['tokens.png']
    assert mmcv.imread(str(out)) is not None


def test_hourglass_clusters_are_drawn_from_the_image(tmp_path, capsys):
    """Each token is drawn in its nearest cluster: at most h x w windows,
    every token's cluster within the window of cells around its own, and
    the tool writes the picture."""
    from mmseg_pm.compression.hourglass import initial_cells
    config = tmp_path / 'hourglass.py'
    config.write_text(
        f"_base_ = ['{BASE}']\n"
        "model = dict(backbone=dict(type='PMVisionTransformer', "
        "embed_dims=32, num_layers=3, num_heads=2, compression=dict("
        "method='hourglass', alpha=1, clusters=(3, 3), window=1)), "
        "decode_head=dict(in_channels=32, channels=32, embed_dims=32, "
        "num_layers=1))\n")
    init_default_scope('mmseg')
    model = MODELS.build(Config.fromfile(str(config)).model)
    model.init_weights()
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    (before, after) = model_token_maps(model.backbone, [0, 1], x)
    assert before.counts()['tokens'] == 64  # block 0 runs on every token
    # window=1: a token sees only its own cell's cluster (current token
    # 1 + cell: the class token is token 0)
    rows, cols = initial_cells((8, 8), (3, 3))
    assert torch.equal(after.group, 1 + rows * 3 + cols)
    checkpoint = tmp_path / 'hourglass.pth'
    torch.save(dict(state_dict=model.state_dict(), meta={}), checkpoint)
    image = write_image(tmp_path / 'image.png')
    out = tmp_path / 'out' / 'clusters.png'
    maps = visualize(config, checkpoint, image, out, '--score-iters', '0',
                     '--dpi', '50')
    assert 'nearest cluster' in capsys.readouterr().out
    assert [m.label for m in maps] == ['block 1']
    assert 1 < maps[0].counts()['tokens'] <= 9
    assert mmcv.imread(str(out)) is not None
