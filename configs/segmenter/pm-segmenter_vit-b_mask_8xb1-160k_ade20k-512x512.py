# Prune-and-Merge Segmenter ViT-B/16, mask transformer head, ADE20K 512x512.
# Everything but the backbone type and its compression comes from mmseg's own
# config (resolved through the mmseg:: scope; see mmseg_pm/config_scope.py).
_base_ = ['mmseg::segmenter/segmenter_vit-b_mask_8xb1-160k_ade20k-512x512.py']
custom_imports = dict(imports=['mmseg_pm.models'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        type='PMVisionTransformer',
        compression=dict(
            mode='layer', layers=list(range(2, 12)), keep_rate=0.7,
            prune_rate=0.0, reconstruct='residual',
            assign='content')))
