"""Draw what a compressed Segmenter merged and pruned, over an image.

One panel per chosen block: merge windows (one colour each, outlined),
centres (dots), tokens kept alone, pruned tokens (grey, hatched). Under
them, the block's token scores as a heat map. Prune and Merge structures
are the same for every image; MSTM and ToMe merge per image, so the image
is run through the model and its source maps are drawn.

The image is resized to the backbone's img_size (the grid the structures
are built for). Token scores come from ``--scores`` (a tensor (L, N), a
dict with ``scores``, or a checkpoint from tools/prune.py), else from the
checkpoint's ``meta['prune_and_merge']['scores']`` (tools/prune.py writes
them), else they are computed on ``--score-iters`` batches of the config's
training data, else left out with a note.

Example::

    python tools/visualize_tokens.py \\
        configs/synthetic/pm-segmenter_vit-tiny_mask_synthetic-ade-64x64.py \\
        work_dirs/pm_tiny/pruned.pth \\
        data/synthetic_ade/images/validation/ADE_val_00000002.jpg \\
        --out tokens.png --layers 1 2 3
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mmseg_pm.models  # noqa: E402,F401  (registers modules and the mmseg:: scope)
import torch  # noqa: E402
from mmengine.config import DictAction  # noqa: E402

from mmseg_pm.apis import (UsageError, check_output_file,  # noqa: E402
                           load_checkpoint_file, save_figure)
from mmseg_pm.cli import int_at_least  # noqa: E402
from mmseg_pm.export import compression_method, load_segmentor  # noqa: E402
from mmseg_pm.visualization import (merging_layers,  # noqa: E402
                                    model_token_maps, plot_token_maps)

MAX_DEFAULT_LAYERS = 4
METHOD_NAMES = dict(pm='Prune and Merge', mstm='MSTM', tome='ToMe',
                    dense='dense')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Draw merge windows, pruned tokens and token scores')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('image', help='image file')
    parser.add_argument('--out', required=True,
                        help='picture to write (.png, .pdf, .svg, ...)')
    parser.add_argument('--force', action='store_true',
                        help='overwrite an existing --out')
    parser.add_argument('--layers', type=int_at_least(0), nargs='+',
                        help='blocks to draw (default: the first '
                        f'{MAX_DEFAULT_LAYERS} blocks where tokens merge)')
    parser.add_argument('--scores', help='token scores: a .pth with an '
                        '(L, N) tensor, a dict with "scores", or a '
                        'checkpoint from tools/prune.py')
    parser.add_argument('--score-iters', type=int_at_least(0), default=4,
                        help='when no scores are found, compute them on this '
                        'many batches of the config\'s training data '
                        '(0: do not)')
    parser.add_argument('--dpi', type=int_at_least(1), default=150)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries')
    return parser.parse_args(argv)


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


def find_scores(args, cfg, model, checkpoint):
    """(scores (L, N) or None, note for the figure)."""
    backbone = model.backbone
    shape = (len(backbone.layers),
             backbone.grid_size[0] * backbone.grid_size[1])
    if args.scores:
        scores, source = scores_in(load_checkpoint_file(args.scores)), \
            args.scores
        if scores is None:
            raise SystemExit(f'error: no token scores in {args.scores}')
    else:
        scores, source = scores_in(checkpoint), 'checkpoint meta'
    if scores is not None:
        if tuple(scores.shape) != shape:
            return None, (f'token scores from {source} have shape '
                          f'{tuple(scores.shape)}, expected {shape}: '
                          'left out')
        return scores.float(), f'token scores: {source}'
    if args.score_iters <= 0:
        return None, 'no token scores (none in the checkpoint; --scores or ' \
            '--score-iters N adds them)'
    from mmseg_pm.apis.scoring import token_scores_from_config
    try:
        scores = token_scores_from_config(model, cfg, args.score_iters,
                                          progress=False)
    except Exception as err:  # no data, not a trainable config, ...
        reason = str(err).splitlines()[0][:120]
        return None, f'no token scores (computing them failed: {reason})'
    model.eval()
    return scores, (f'token scores: computed on {args.score_iters} training '
                    'batches')


def load_image(path, model):
    """(RGB uint8 array for display, preprocessed (1, 3, H, W) input), the
    image resized to the backbone's img_size."""
    import mmcv

    bgr = mmcv.imread(path)
    if bgr is None:
        raise SystemExit(f'error: cannot read image {path}')
    h, w = model.backbone.img_size
    bgr = mmcv.imresize(bgr, (w, h))
    tensor = torch.from_numpy(bgr.copy()).permute(2, 0, 1)
    with torch.no_grad():
        data = model.data_preprocessor(dict(inputs=[tensor]), False)
    return bgr[..., ::-1].copy(), data['inputs']


def check_out(args) -> None:
    """--out: a picture format matplotlib writes, and the output rule."""
    from matplotlib.figure import Figure

    check_output_file(args.out, dict(config=args.config,
                                     checkpoint=args.checkpoint,
                                     image=args.image, scores=args.scores),
                      args.force)
    formats = Figure().canvas.get_supported_filetypes()
    if Path(args.out).suffix[1:].lower() not in formats:
        raise UsageError(f'--out {args.out}: name a picture file ending in '
                         f'one of {sorted("." + f for f in formats)}')


def main(argv=None):
    args = parse_args(argv)
    try:
        return draw(args)
    except UsageError as err:
        raise SystemExit(f'error: {err}')


def draw(args):
    for path in (args.config, args.image):
        if Path(path).is_dir():
            raise SystemExit(f'error: {path} is a folder; name a file')
        if not Path(path).is_file():
            raise SystemExit(f'error: file not found: {path}')
    check_out(args)
    cfg, model = load_segmentor(args.config, args.checkpoint,
                                args.cfg_options)
    backbone = model.backbone
    if not hasattr(backbone, 'compressed_units'):
        raise SystemExit('error: the backbone is not a PMVisionTransformer; '
                         'nothing is merged')
    method = compression_method(model)
    layers = args.layers or merging_layers(backbone)[:MAX_DEFAULT_LAYERS]
    if not layers:
        layers = [len(backbone.layers) - 1]
    image, inputs = load_image(args.image, model)
    try:
        token_maps = model_token_maps(backbone, layers, inputs)
    except ValueError as err:
        raise SystemExit(f'error: {err}')
    checkpoint = load_checkpoint_file(args.checkpoint)
    scores, note = find_scores(args, cfg, model, checkpoint)
    per_layer = [None if scores is None else scores[i] for i in layers]
    if method in ('mstm', 'tome'):
        note += ' | merges depend on the image: this is its source map'
    title = f'{METHOD_NAMES[method]}: {Path(args.image).name}'
    fig = plot_token_maps(image, token_maps, per_layer, note, title)
    out = save_figure(fig, args.out, dpi=args.dpi)
    for token_map in token_maps:
        print(f'{token_map.label}: {token_map.title}')
    print(note)
    print(f'wrote {out}')
    return token_maps


if __name__ == '__main__':
    main()
