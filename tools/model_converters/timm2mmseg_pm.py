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
from mmseg_pm.cli.timm2mmseg_pm import main

if __name__ == '__main__':
    main()
