# ToMe Segmenter ViT-S/16, mask transformer head, ADE20K 512x512: every block
# merges r=48 tokens by bipartite soft matching (1025 -> 449 tokens after
# block 11, about a third of the encoder's FLOPs saved). Training-free: test
# the dense checkpoint with this config as it is.
_base_ = ['mmseg::segmenter/segmenter_vit-s_mask_8xb1-160k_ade20k-512x512.py']
custom_imports = dict(imports=['mmseg_pm.models'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        type='PMVisionTransformer',
        compression=dict(method='tome', layers=list(range(12)), r=48)))
