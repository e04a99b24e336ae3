"""Convert a checkpoint of the original Segmenter code (rstrudel/segmenter)
-- optionally with the Prune-and-Merge authors' per-block merge/reconstruct
matrices -- to mmseg / mmseg_pm names.

``encoder.*`` -> ``backbone.*`` (``PMVisionTransformer``), ``decoder.*`` ->
``decode_head.*`` (mmseg's ``SegmenterMaskTransformerHead``), and the
matrices (names: ``mmseg_pm.converters.PM_MATRIX_KEYS``) -> the backbone's
``token_compressors``. The printed ``compression=`` goes into the config;
the checkpoint then loads with ``load_from`` / ``tools/test.py``.

Example::

    python tools/model_converters/segmenter2mmseg_pm.py \\
        seg_small_mask/checkpoint.pth work_dirs/seg_small_mask_mmseg.pth

Segmenter's LayerNorms use eps 1e-5 (not the 1e-6 of mmseg's Segmenter
configs) and its patch embedding has a bias: the backbone config needs
``norm_cfg=dict(type='LN', eps=1e-5)`` and ``patch_bias=True``.
"""
import sys

from mmseg_pm.utils.errors import UsageError
from mmseg_pm.cli import converter_parser, print_conversion
from mmseg_pm.converters import (check_destination,
                                 convert_segmenter,
                                 load_weights_file, save_converted,
                                 unwrap_state_dict)


def parse_args(argv=None):
    parser = converter_parser(
        'Convert Segmenter (and Prune-and-Merge) checkpoints to mmseg / '
        'mmseg_pm names', 'Segmenter checkpoint.pth', 'model / state_dict')
    parser.add_argument('--grid', type=int, nargs=2, metavar=('H', 'W'),
                        help='patch grid of the merge matrices (default: the '
                        'square grid of the position embedding)')
    parser.add_argument('--derive-reconstruct', action='store_true',
                        help='reconstruct a merge that has no reconstruct '
                        'matrix with the pseudo-inverse of its merge matrix')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        check_destination(args.src, args.dst, args.force)
        checkpoint = load_weights_file(args.src)
        state_dict = unwrap_state_dict(checkpoint, args.key)
        converted, compression, notes = convert_segmenter(
            state_dict, grid=tuple(args.grid) if args.grid else None,
            derive_reconstruct=args.derive_reconstruct,
            drop_dist_token=args.drop_dist_token)
        meta = dict(converted_from=str(args.src), format='segmenter',
                    compression=compression, notes=notes)
        save_converted(converted, args.dst, meta=meta, replace=args.force)
    except UsageError as err:  # ConversionError, checkpoint, output
        sys.exit(f'error: {err}')
    print_conversion(converted, notes, args.dst)
    return compression


if __name__ == '__main__':
    main()
