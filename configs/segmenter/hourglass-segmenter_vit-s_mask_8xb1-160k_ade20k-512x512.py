# Expedite's Hourglass Segmenter ViT-S/16, mask transformer head, ADE20K
# 512x512, training-free: test mmseg's dense checkpoint with this config.
# The 32x32 patch tokens are clustered into 21x21 cluster tokens before block
# 5 of 12 (the authors' relative depth: their ViT-L clusters before block 10
# of 24) by 5 soft k-means steps in 5x5-cell windows; every output is
# rebuilt from each token's 20 nearest clusters. Encoder GFLOPs, counted
# with the clustering and reconstruction: 69.6 % of the dense encoder's (the
# authors' ViT-L 640 setting gives 70.0 %).
_base_ = ['mmseg::segmenter/segmenter_vit-s_mask_8xb1-160k_ade20k-512x512.py']
custom_imports = dict(imports=['mmseg_pm.models'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        type='PMVisionTransformer',
        compression=dict(method='hourglass', alpha=5, clusters=(21, 21),
                         iters=5, window=5, k=20)))
