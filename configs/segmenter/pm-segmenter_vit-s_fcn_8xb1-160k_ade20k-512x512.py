# Prune-and-Merge ViT-S/16 with a linear (FCN, no convs) head, ADE20K 512x512:
# the compressed backbone hands any mmseg head the full token grid.
_base_ = ['mmseg::segmenter/segmenter_vit-s_fcn_8xb1-160k_ade20k-512x512.py']
custom_imports = dict(imports=['mmseg_pm.models'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        type='PMVisionTransformer',
        compression=dict(
            mode='layer', layers=list(range(2, 12)), keep_rate=0.7,
            prune_rate=0.0, reconstruct='residual',
            assign='content')))
