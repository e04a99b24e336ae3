# MPM Segmenter ViT-B/16, mask transformer head, ADE20K 512x512, with the
# authors' setting: mutual nearest-neighbour pairs of the patch tokens are
# averaged before blocks 2 and 5 (0-based: before the 3rd and the 6th block),
# the same on every backbone. Each image merges its own pairs (docs/peers.md).
# Training-free: test the dense checkpoint with this config as it is.
_base_ = ['mmseg::segmenter/segmenter_vit-b_mask_8xb1-160k_ade20k-512x512.py']
custom_imports = dict(imports=['mmseg_pm.models'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        type='PMVisionTransformer',
        compression=dict(method='mpm', layers=(2, 5))))
