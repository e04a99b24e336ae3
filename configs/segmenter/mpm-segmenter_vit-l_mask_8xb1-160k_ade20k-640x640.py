# MPM Segmenter ViT-L/16, mask transformer head, ADE20K 640x640 (mmseg's
# ViT-L config, whose file name says 512), with the authors' setting: mutual
# nearest-neighbour pairs of the patch tokens are averaged before blocks 2
# and 5 (0-based: before the 3rd and the 6th of 24 blocks), the same on every
# backbone. Each image merges its own pairs (docs/peers.md). Training-free:
# test the dense checkpoint with this config as it is.
_base_ = ['mmseg::segmenter/segmenter_vit-l_mask_8xb1-160k_ade20k-512x512.py']
custom_imports = dict(imports=['mmseg_pm.models'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        type='PMVisionTransformer',
        compression=dict(method='mpm', layers=(2, 5))))
