# ALGM Segmenter ViT-T/16, mask transformer head, ADE20K 512x512, with the
# authors' ViT-T settings: local 2x2 merging at their layer 1 (block 0) with
# threshold 0.90, global merging with the adaptive count at their layer 5
# (block 4). Each image merges its own count (docs/peers.md). Training-free:
# test the dense checkpoint with this config as it is.
_base_ = ['mmseg::segmenter/segmenter_vit-t_mask_8xb1-160k_ade20k-512x512.py']
custom_imports = dict(imports=['mmseg_pm.models'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        type='PMVisionTransformer',
        compression=dict(method='algm', local_layer=0, global_layer=4,
                         threshold=0.90, window=(2, 2))))
