"""Convert a timm Vision Transformer checkpoint to mmseg / mmseg_pm names.

The output initialises ``PMVisionTransformer`` (or mmseg's
``VisionTransformer``) from a config::

    backbone=dict(type='PMVisionTransformer', patch_bias=True,
                  norm_cfg=dict(type='LN', eps=1e-6), ...,
                  init_cfg=dict(type='Pretrained', checkpoint=DST))

Example::

    python tools/model_converters/timm2mmseg_pm.py \\
        vit_small_patch16_384.safetensors pretrain/vit_small_p16_384.pth

Reads .pth/.pt/.bin (weights only) and .safetensors; DeiT (``model``) and
timm training (``state_dict``) containers are unwrapped.
"""
import sys

from mmseg_pm.utils.errors import UsageError
from mmseg_pm.cli import converter_parser, print_conversion
from mmseg_pm.converters import (check_destination,
                                 convert_timm_vit,
                                 load_weights_file, save_converted,
                                 unwrap_state_dict)


def parse_args(argv=None):
    return converter_parser(
        'Convert timm ViT weights to mmseg VisionTransformer (and '
        'PMVisionTransformer) names',
        'timm checkpoint (.pth/.bin/.safetensors)',
        'state_dict, model, or the file itself').parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        check_destination(args.src, args.dst, args.force)
        state_dict = unwrap_state_dict(load_weights_file(args.src), args.key)
        converted, notes = convert_timm_vit(state_dict, args.drop_dist_token)
        save_converted(converted, args.dst,
                       meta=dict(converted_from=str(args.src),
                                 format='timm_vit', notes=notes),
                       replace=args.force)
    except UsageError as err:  # ConversionError, checkpoint, output
        sys.exit(f'error: {err}')
    print_conversion(converted, notes, args.dst)


if __name__ == '__main__':
    main()
