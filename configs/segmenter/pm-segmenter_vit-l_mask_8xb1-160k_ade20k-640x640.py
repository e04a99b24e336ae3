# Prune-and-Merge Segmenter ViT-L/16, mask transformer head, ADE20K 640x640
# (mmseg ships this setting under the file name ...-512x512.py; its crop,
# img_size and slide window are 640).
_base_ = ['mmseg::segmenter/segmenter_vit-l_mask_8xb1-160k_ade20k-512x512.py']
custom_imports = dict(imports=['mmseg_pm.models'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        type='PMVisionTransformer',
        compression=dict(
            mode='layer', layers=list(range(4, 24)), keep_rate=0.7,
            prune_rate=0.0, reconstruct='residual',
            assign='content')))
