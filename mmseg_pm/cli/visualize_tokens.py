"""Draw what a compressed Segmenter merged and pruned, over an image.

One panel per chosen block: merge windows (one colour each, outlined),
centres (dots), tokens kept alone, pruned tokens (grey, hatched). Under
them, the block's token scores as a heat map. Prune and Merge's centres
are the same for every image (its content-aware windows are that image's);
every other method merges per image, so the image is run through the
model and its source maps are drawn (what they show: the method's
``picture_note``, printed with the picture).

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
from pathlib import Path

import mmseg_pm.models  # noqa: F401  (registers modules, the mmseg:: scope)

from mmseg_pm.apis import init_segmentor
from mmseg_pm.apis.config import load_config
from mmseg_pm.cli import CfgOptionsAction, int_at_least, run_cli
from mmseg_pm.utils.errors import UsageError
from mmseg_pm.utils.outputs import check_output_file
from mmseg_pm.visualization import MAX_DEFAULT_LAYERS, draw_model_tokens


def build_parser() -> argparse.ArgumentParser:
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
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction,
                        help='override config entries')
    return parser


def check_out(args) -> None:
    """--out: the output rule, for a picture (a format matplotlib
    writes)."""
    check_output_file(args.out, dict(config=args.config,
                                     checkpoint=args.checkpoint,
                                     image=args.image, scores=args.scores),
                      args.force, kind='picture')


def draw(args):
    for path in (args.config, args.image):
        if Path(path).is_dir():
            raise UsageError(f'{path} is a folder; name a file')
        if not Path(path).is_file():
            raise UsageError(f'file not found: {path}')
    check_out(args)
    cfg = load_config(args.config, args.cfg_options)
    model = init_segmentor(cfg, args.checkpoint)
    token_maps, note, out = draw_model_tokens(
        cfg, model, args.checkpoint, args.image, args.out, args.layers,
        args.scores, args.score_iters, args.dpi, args.force)
    for token_map in token_maps:
        print(f'{token_map.label}: {token_map.title}')
    print(note)
    print(f'wrote {out}')
    return token_maps


def main(argv=None):
    return run_cli(build_parser(), draw, argv)


if __name__ == '__main__':
    main()
