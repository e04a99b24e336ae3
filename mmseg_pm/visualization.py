"""Pictures of what a compressed ViT merged.

Pure plotting functions on plain data first; at the end, the helpers that
read that data off a ``PMVisionTransformer`` (structures, or per-image source
maps recorded while a reducer without structures runs).

A :class:`TokenMap` is what one block sees of the patch grid: for every
grid position the token that holds it (``group``, -1 if the position was
pruned and skips the block) and optionally which positions are centres.
It comes from a Prune-and-Merge structure (static, the same for every
image) or from a source map (per image: every reducer records one, see
:attr:`~mmseg_pm.compression.reducer.TokenReducer.sources`).
:func:`plot_token_maps` draws one panel per block over the image, with a
distinct style per role:

* merged windows: filled, one colour each (neighbouring windows never share
  a colour), outlined in black;
* tokens kept alone: no fill, outlined;
* centres (Prune and Merge): white dots;
* pruned tokens: grey, hatched;

and, when token scores are given, a heat map per block underneath.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

# qualitative colours: tab10 then its light tab20 partners, without the
# greys (grey marks pruned tokens)
PALETTE = ('#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b',
           '#e377c2', '#bcbd22', '#17becf', '#aec7e8', '#ffbb78', '#98df8a',
           '#ff9896', '#c5b0d5', '#c49c94', '#f7b6d2', '#dbdb8d', '#9edae5')
PRUNED_COLOUR = '#7f7f7f'
WINDOW_ALPHA = 0.6
PRUNED_ALPHA = 0.8


@dataclass
class TokenMap:
    """Roles of the patch tokens of one block on an (H, W) grid.

    ``group[p]``: id of the token that holds grid position p (raster
    order), -1 if p is pruned; ids need not be contiguous. ``centre``:
    (N,) bool, positions drawn as centres, or None when the method has no
    centres (a source map). ``label`` names the block (e.g. 'block 2'),
    ``title`` describes the map; panels show 'label: title'.
    """

    grid: Tuple[int, int]
    group: Tensor
    centre: Optional[Tensor] = None
    title: str = ''
    label: str = ''

    def __post_init__(self):
        self.grid = (int(self.grid[0]), int(self.grid[1]))
        n = self.grid[0] * self.grid[1]
        self.group = torch.as_tensor(self.group).long().flatten().cpu()
        if self.group.numel() != n:
            raise ValueError(f'group has {self.group.numel()} entries for a '
                             f'{self.grid[0]}x{self.grid[1]} grid')
        if self.centre is not None:
            self.centre = torch.as_tensor(self.centre).bool().flatten().cpu()
            if self.centre.numel() != n:
                raise ValueError(f'centre has {self.centre.numel()} entries '
                                 f'for a {self.grid[0]}x{self.grid[1]} grid')

    @property
    def window(self) -> Tensor:
        """Contiguous window index 0..K-1 per position (-1: pruned)."""
        window = torch.full_like(self.group, -1)
        kept = self.group >= 0
        window[kept] = torch.unique(self.group[kept],
                                    return_inverse=True)[1]
        return window

    def counts(self) -> Dict[str, int]:
        window = self.window
        kept = window >= 0
        sizes = torch.bincount(window[kept]) if kept.any() else \
            torch.zeros(0, dtype=torch.long)
        return dict(tokens=int(sizes.numel()),
                    merged_windows=int((sizes > 1).sum()),
                    alone=int((sizes == 1).sum()),
                    pruned=int((~kept).sum()))


def token_map_from_structure(structure, label: str = '') -> TokenMap:
    """A Prune-and-Merge ``CompressionStructure`` as a :class:`TokenMap`."""
    centre = torch.zeros(structure.num_tokens, dtype=torch.bool)
    centre[structure.centre] = True
    title = (f'{structure.num_groups} centres, {structure.num_merged} '
             f'merged, {structure.num_pruned} pruned')
    return TokenMap(structure.grid, structure.group, centre, title, label)


def token_map_from_assignment(source: Tensor,
                              structure,
                              num_prefix: int = 1,
                              label: str = '') -> TokenMap:
    """Content-aware windows of one image (its source map: merged token of
    every token, prefix tokens first) around the structure's centres."""
    source = torch.as_tensor(source).long().flatten().cpu()[num_prefix:]
    group = torch.where(source >= 0, source - num_prefix, -1)
    centre = torch.zeros(structure.num_tokens, dtype=torch.bool)
    centre[structure.centre] = True
    title = (f'{structure.num_groups} centres, windows of this image, '
             f'{structure.num_pruned} pruned')
    return TokenMap(structure.grid, group, centre, title, label)


def token_map_from_source(source: Tensor, grid: Tuple[int, int],
                          num_prefix: int = 1, label: str = '') -> TokenMap:
    """A source map of one image (current token of every original
    token, the first ``num_prefix`` being the class token) as a
    :class:`TokenMap` of its patch positions."""
    source = torch.as_tensor(source).long().flatten().cpu()[num_prefix:]
    token_map = TokenMap(grid, source, None, '', label)
    c = token_map.counts()
    token_map.title = (f'{c["tokens"]} tokens, {c["merged_windows"]} '
                       f'merged groups')
    return token_map


def dense_token_map(grid: Tuple[int, int], label: str = '') -> TokenMap:
    """Every position its own token (a block that is not compressed)."""
    return TokenMap(grid, torch.arange(grid[0] * grid[1]), None,
                    'not compressed', label)


def window_adjacency(window: Tensor, grid: Tuple[int, int]) -> set:
    """Pairs (a, b), a < b, of windows that share a grid edge."""
    h, w = grid
    cells = window.view(h, w)
    pairs = set()
    for a, b in ((cells[:, :-1], cells[:, 1:]), (cells[:-1], cells[1:])):
        differ = (a != b) & (a >= 0) & (b >= 0)
        for x, y in zip(a[differ].tolist(), b[differ].tolist()):
            pairs.add((min(x, y), max(x, y)))
    return pairs


def colour_windows(window: Tensor, grid: Tuple[int, int],
                   num_colours: int = len(PALETTE)) -> Tensor:
    """Colour index per window such that windows sharing an edge differ
    (greedy, in raster order of the windows; cycles only if a window has
    ``num_colours`` differently coloured neighbours, which planar-ish grids
    of windows practically never do)."""
    k = int(window.max()) + 1 if (window >= 0).any() else 0
    neighbours: List[set] = [set() for _ in range(k)]
    for a, b in window_adjacency(window, grid):
        neighbours[a].add(b)
        neighbours[b].add(a)
    colour = torch.full((k, ), -1, dtype=torch.long)
    for i in range(k):
        used = {int(colour[j]) for j in neighbours[i] if colour[j] >= 0}
        free = [c for c in range(num_colours) if c not in used]
        colour[i] = free[0] if free else i % num_colours
    return colour


def window_edges(group: Tensor, grid: Tuple[int, int]) -> np.ndarray:
    """Segments (M, 2, 2) in cell units, x right and y down, along every
    grid edge between positions held by different tokens (pruned positions
    count as tokens of their own), plus the outer border."""
    h, w = grid
    cells = group.view(h, w)
    ids = torch.where(cells >= 0, cells,
                      -1 - torch.arange(h * w).view(h, w))  # pruned: unique
    segments = []
    rows, cols = torch.nonzero(ids[:, :-1] != ids[:, 1:], as_tuple=True)
    for r, c in zip(rows.tolist(), cols.tolist()):
        segments.append(((c + 1, r), (c + 1, r + 1)))
    rows, cols = torch.nonzero(ids[:-1] != ids[1:], as_tuple=True)
    for r, c in zip(rows.tolist(), cols.tolist()):
        segments.append(((c, r + 1), (c + 1, r + 1)))
    segments += [((0, 0), (w, 0)), ((w, 0), (w, h)), ((w, h), (0, h)),
                 ((0, h), (0, 0))]
    return np.asarray(segments, dtype=float)


def window_colours(token_map: TokenMap) -> Tensor:
    """Palette index per window. Up to ``len(PALETTE)`` merged windows get
    a colour each (so the scattered parts of one group of a source map read as
    one); more are coloured so that neighbouring windows differ."""
    window = token_map.window
    kept = window >= 0
    if not kept.any():
        return torch.zeros(0, dtype=torch.long)
    sizes = torch.bincount(window[kept])
    merged = torch.nonzero(sizes > 1).flatten()
    if merged.numel() <= len(PALETTE):
        colours = torch.zeros(sizes.numel(), dtype=torch.long)
        colours[merged] = torch.arange(merged.numel())
        return colours
    return colour_windows(window, token_map.grid)


def window_overlay(token_map: TokenMap) -> np.ndarray:
    """(H, W, 4) RGBA fill: merged windows coloured, tokens alone clear,
    pruned positions grey."""
    from matplotlib.colors import to_rgba

    h, w = token_map.grid
    window = token_map.window
    kept = window >= 0
    sizes = torch.bincount(window[kept], minlength=int(window.max()) + 1) \
        if kept.any() else torch.zeros(0, dtype=torch.long)
    colours = window_colours(token_map)
    rgba = np.zeros((h * w, 4))
    for p in range(h * w):
        k = int(window[p])
        if k < 0:
            rgba[p] = to_rgba(PRUNED_COLOUR, PRUNED_ALPHA)
        elif sizes[k] > 1:
            rgba[p] = to_rgba(PALETTE[int(colours[k])], WINDOW_ALPHA)
    return rgba.reshape(h, w, 4)


def muted(image: np.ndarray) -> np.ndarray:
    """A light greyscale copy of an RGB image (uint8 or float in [0, 1]),
    so the window colours drawn over it stand out."""
    rgb = np.asarray(image, dtype=float)
    if rgb.max() > 1:
        rgb = rgb / 255.0
    grey = rgb[..., :3] @ np.array([0.299, 0.587, 0.114])
    return np.repeat((0.35 + 0.6 * grey)[..., None], 3, axis=-1)


def _show_image(ax, image: Optional[np.ndarray], grid: Tuple[int, int]):
    h, w = grid
    if image is not None:
        ax.imshow(muted(image), extent=(0, w, h, 0),
                  interpolation='bilinear')
        ax.set_aspect((image.shape[0] / h) / (image.shape[1] / w))
    else:
        ax.set_facecolor('#f0f0f0')
        ax.set_aspect('equal')
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([])
    ax.set_yticks([])


def draw_token_map(ax, image: Optional[np.ndarray], token_map: TokenMap,
                   title: Optional[str] = None) -> None:
    """One panel: the image (RGB uint8 or float, or None; shown in light
    grey) with the token roles drawn over it in grid-cell coordinates."""
    from matplotlib.collections import LineCollection, PatchCollection
    from matplotlib.patches import Rectangle

    h, w = token_map.grid
    _show_image(ax, image, token_map.grid)
    ax.imshow(window_overlay(token_map), extent=(0, w, h, 0),
              interpolation='nearest')
    pruned = torch.nonzero(token_map.group < 0).flatten().tolist()
    if pruned:
        ax.add_collection(PatchCollection(
            [Rectangle((p % w, p // w), 1, 1) for p in pruned],
            facecolor='none', edgecolor='#3a3a3a', hatch='////',
            linewidth=0))
    ax.add_collection(LineCollection(window_edges(token_map.group,
                                                  token_map.grid),
                                     colors='black', linewidths=1.2))
    if token_map.centre is not None and token_map.centre.any():
        centres = torch.nonzero(token_map.centre).flatten()
        size = max(8.0, 900.0 / max(h, w))
        ax.scatter((centres % w).numpy() + 0.5, (centres // w).numpy() + 0.5,
                   s=size, c='white', edgecolors='black', linewidths=0.8,
                   zorder=3)
    if title is None:
        title = ': '.join(t for t in (token_map.label, token_map.title) if t)
    # a panel is about 40 characters wide at this size: wrap, never clip
    ax.set_title(textwrap.fill(title, 40), fontsize=9)


def draw_scores(ax, scores: Tensor, grid: Tuple[int, int],
                title: str = ''):
    """A heat map of one block's token scores; returns the image artist
    (for a colour bar)."""
    h, w = grid
    values = torch.as_tensor(scores).float().flatten().cpu()
    if values.numel() != h * w:
        raise ValueError(f'{values.numel()} scores for a {h}x{w} grid')
    artist = ax.imshow(values.view(h, w).numpy(), cmap='magma',
                       extent=(0, w, h, 0), interpolation='nearest')
    ax.set_aspect('equal')
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    return artist


def legend_handles(with_centres: bool = True) -> list:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor=PALETTE[0], alpha=WINDOW_ALPHA, edgecolor='black',
              label='merged window (one colour each)'),
        Patch(facecolor='none', edgecolor='black', label='token kept alone'),
        Patch(facecolor=PRUNED_COLOUR, alpha=PRUNED_ALPHA, hatch='////',
              edgecolor='#3a3a3a', label='pruned (skips the block)'),
    ]
    if with_centres:
        handles.insert(1, Line2D([], [], marker='o', linestyle='none',
                                 markerfacecolor='white',
                                 markeredgecolor='black', markersize=7,
                                 label='centre'))
    return handles


def plot_token_maps(image: Optional[np.ndarray],
                    token_maps: Sequence[TokenMap],
                    scores: Optional[Sequence[Optional[Tensor]]] = None,
                    score_note: Optional[str] = None,
                    title: str = '',
                    panel_size: float = 3.2):
    """The figure: one column per token map (image + roles), and under it
    the block's token scores as a heat map when ``scores[i]`` is given.
    ``score_note`` is printed under the panels (e.g. why scores are
    missing). Returns the matplotlib Figure (not shown, not saved)."""
    from matplotlib.figure import Figure

    if not token_maps:
        raise ValueError('nothing to draw: no token maps')
    scores = list(scores) if scores is not None else []
    scores += [None] * (len(token_maps) - len(scores))
    with_scores = any(s is not None for s in scores)
    rows = 2 if with_scores else 1
    cols = len(token_maps)
    fig = Figure(figsize=(max(panel_size * cols + 0.6, 6.5),
                          panel_size * rows + 1.5))
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, token_map in enumerate(token_maps):
        draw_token_map(axes[0, i], image, token_map)
        if not with_scores:
            continue
        if scores[i] is None:
            axes[1, i].axis('off')
            continue
        label = f', {token_map.label}' if token_map.label else ''
        artist = draw_scores(axes[1, i], scores[i], token_map.grid,
                             f'token scores{label}')
        fig.colorbar(artist, ax=axes[1, i], fraction=0.046, pad=0.04)
    with_centres = any(m.centre is not None and m.centre.any()
                       for m in token_maps)
    fig.legend(handles=legend_handles(with_centres), loc='lower center',
               ncol=4, fontsize=8, frameon=False)
    if score_note:
        width = int(fig.get_figwidth() * 13)  # characters at fontsize 8
        fig.text(0.5, 0.05, textwrap.fill(score_note, width), ha='center',
                 va='bottom', fontsize=8, color='#444444')
    if title:
        fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.02, right=0.95, top=0.88 if title else 0.93,
                        bottom=0.17 if rows == 1 else 0.12, wspace=0.3,
                        hspace=0.25)
    return fig


# ---------------------------------------------------------------------------
# token maps of a model (needs a PMVisionTransformer backbone)
def record_source_maps(backbone, inputs: Tensor) -> Dict[int, Tensor]:
    """Run ``inputs`` through the backbone with its reducer's source trace
    on; for every block, the source map after the block: (B, T0) current
    token of every original token (class token first)."""
    reducer = backbone.reducer
    if reducer is None:
        raise ValueError('the backbone has no token reducer')
    reducer.trace_source = True
    try:
        with torch.no_grad():
            backbone(inputs)
    finally:
        reducer.trace_source = False
    return {i: s.cpu() for i, s in reducer.sources.items()}


def merging_layers(backbone) -> List[int]:
    """Blocks where the backbone's tokens change: the first block of every
    unit with a structure, or the blocks where another reducer merges."""
    reducer = backbone.reducer
    return [] if reducer is None else sorted(reducer.merging_blocks())


def model_token_maps(backbone, layers: Sequence[int],
                     inputs: Optional[Tensor] = None) -> List[TokenMap]:
    """One :class:`TokenMap` per block in ``layers``.

    A reducer with structures (Prune and Merge): the structure of the
    unit the block belongs to (the same for every image; with per-image
    merges, the first image's windows around the structure's centres).
    Any other reducer: the source map of the first image of ``inputs``
    after the block's merge (merges carry over to later blocks; Hourglass:
    each token's nearest cluster from the clustering block on).
    """
    grid = tuple(backbone.grid_size)
    num_layers = len(backbone.layers)
    for i in layers:
        if not 0 <= i < num_layers:
            raise ValueError(f'block {i} does not exist (0..{num_layers - 1})')
    reducer = backbone.reducer
    if reducer is not None and not reducer.units:
        if inputs is None:
            raise ValueError(f'{reducer.spec.label} merges per image: pass '
                             'the image')
        sources = record_source_maps(backbone, inputs)
        num_prefix = 1 if backbone.with_cls_token else 0
        hw = tuple(int(s) // backbone.patch_size for s in inputs.shape[-2:])
        return [token_map_from_source(sources[i][0], hw, num_prefix,
                                      f'block {i}') for i in layers]
    units = {first: (first, last) for first, last in backbone.compressed_units}
    structures = dict(zip(units, backbone.structures()))
    per_image = list(units) if reducer is not None and \
        reducer.per_image_merges else []
    if per_image:
        if inputs is None:
            raise ValueError('content-aware windows depend on the image: '
                             'pass the image')
        sources = record_source_maps(backbone, inputs)
    maps = []
    for i in layers:
        unit = next(((a, b) for a, b in units.values() if a <= i <= b), None)
        if unit is None:
            maps.append(dense_token_map(grid, f'block {i}'))
            continue
        label = f'block {i}' if unit[0] == unit[1] else \
            f'block {i} (span {unit[0]}-{unit[1]})'
        if unit[0] in per_image:
            maps.append(token_map_from_assignment(
                sources[unit[0]][0], structures[unit[0]],
                1 if backbone.with_cls_token else 0, label))
            continue
        maps.append(token_map_from_structure(structures[unit[0]], label))
    return maps


# ---------------------------------------------------------------- a model
MAX_DEFAULT_LAYERS = 4


def scores_in(obj):
    """An (L, N) tensor found in a scores file or checkpoint, else None."""
    if isinstance(obj, torch.Tensor):
        return obj
    if not isinstance(obj, dict):
        return None
    meta = obj.get('meta', {})
    for candidate in (obj.get('scores'),
                      meta.get('prune_and_merge', {}).get('scores'),
                      meta.get('scores')):
        if isinstance(candidate, torch.Tensor):
            return candidate
    return None


def find_scores(cfg, model, checkpoint: dict, scores_file=None,
                score_iters: int = 4):
    """(scores (L, N) or None, note for the figure): from ``scores_file``,
    else the checkpoint's meta, else computed on ``score_iters`` training
    batches of the config, else none."""
    from mmseg_pm.utils.errors import UsageError
    from mmseg_pm.utils.checkpoint import load_weights_only

    backbone = model.backbone
    shape = (len(backbone.layers),
             backbone.grid_size[0] * backbone.grid_size[1])
    if scores_file:
        scores, source = scores_in(load_weights_only(scores_file)), \
            scores_file
        if scores is None:
            raise UsageError(f'no token scores in {scores_file}: give an '
                             f'{shape} tensor, a dict with "scores", or a '
                             'checkpoint written by tools/prune.py')
        if tuple(scores.shape) != shape:
            raise UsageError(f'--scores {scores_file} holds scores of shape '
                             f'{tuple(scores.shape)}; this model needs '
                             f'{shape} (blocks, patch tokens)')
    else:
        scores, source = scores_in(checkpoint), 'checkpoint meta'
    if scores is not None:
        scores = scores.float()
        if not bool(torch.isfinite(scores).all()):
            bad = int((~torch.isfinite(scores)).sum())
            raise UsageError(f'the token scores in {source} are not finite '
                             f'numbers ({bad} NaN or Inf of '
                             f'{scores.numel()}): they cannot be drawn; '
                             'score the model again (tools/prune.py) or '
                             'pass other --scores')
        if tuple(scores.shape) != shape:
            return None, (f'token scores from {source} have shape '
                          f'{tuple(scores.shape)}, expected {shape}: '
                          'left out')
        return scores.float(), f'token scores: {source}'
    if score_iters <= 0:
        return None, 'no token scores (none in the checkpoint; --scores or ' \
            '--score-iters N adds them)'
    from mmseg_pm.apis import token_scores_from_config
    try:
        scores = token_scores_from_config(model, cfg, score_iters,
                                          progress=False)
    except Exception as err:  # no data, not a trainable config, ...
        reason = str(err).splitlines()[0][:120]
        return None, f'no token scores (computing them failed: {reason})'
    model.eval()
    return scores, (f'token scores: computed on {score_iters} training '
                    'batches')


def load_image(path, model):
    """(RGB uint8 array for display, preprocessed (1, 3, H, W) input), the
    image resized to the backbone's img_size."""
    import mmcv

    from mmseg_pm.utils.errors import UsageError

    bgr = mmcv.imread(path)
    if bgr is None:
        raise UsageError(f'cannot read image {path}')
    h, w = model.backbone.img_size
    bgr = mmcv.imresize(bgr, (w, h))
    tensor = torch.from_numpy(bgr.copy()).permute(2, 0, 1)
    with torch.no_grad():
        data = model.data_preprocessor(dict(inputs=[tensor]), False)
    return bgr[..., ::-1].copy(), data['inputs']


def draw_model_tokens(cfg, model, checkpoint: str, image: str, out: str,
                      layers: Optional[Sequence[int]] = None,
                      scores_file: Optional[str] = None,
                      score_iters: int = 4, dpi: int = 150,
                      replace: bool = True):
    """The picture of tools/visualize_tokens.py: one panel per block of
    ``layers`` (default: the first blocks where tokens merge) with its
    merge windows over ``image``, the token scores under them; written to
    ``out`` (atomically; ``replace=False``: refused if another run wrote it
    meanwhile). Returns (token maps, note, path written)."""
    from mmseg_pm.utils.checkpoint import load_checkpoint_file
    from mmseg_pm.utils.errors import UsageError
    from mmseg_pm.utils.outputs import save_figure

    backbone = model.backbone
    if not hasattr(backbone, 'compressed_units'):
        raise UsageError('the config\'s backbone is not a '
                         'PMVisionTransformer, so no tokens are merged to '
                         'draw; pass a compressed config (pm-, mstm- or '
                         'tome-*.py in configs/) with its checkpoint')
    layers = layers or merging_layers(backbone)[:MAX_DEFAULT_LAYERS]
    if not layers:
        layers = [len(backbone.layers) - 1]
    picture, inputs = load_image(image, model)
    try:
        token_maps = model_token_maps(backbone, layers, inputs)
    except ValueError as err:
        raise UsageError(str(err)) from err
    scores, note = find_scores(cfg, model, load_checkpoint_file(checkpoint),
                               scores_file, score_iters)
    per_layer = [None if scores is None else scores[i] for i in layers]
    reducer = backbone.reducer
    if reducer is not None and reducer.per_image_merges:
        note += f' | {reducer.spec.picture_note}'
    title = f'{reducer.spec.label if reducer else "dense"}: {Path(image).name}'
    fig = plot_token_maps(picture, token_maps, per_layer, note, title)
    return token_maps, note, save_figure(fig, out, replace, dpi=dpi)
