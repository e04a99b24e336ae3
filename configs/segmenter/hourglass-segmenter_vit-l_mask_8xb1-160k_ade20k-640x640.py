# Expedite's Hourglass Segmenter ViT-L/16, mask transformer head, ADE20K
# 640x640 (mmseg ships this setting under the file name ...-512x512.py; its
# crop, img_size and slide window are 640), training-free: test mmseg's dense
# checkpoint with this config. The authors' setting: the 40x40 patch tokens
# are clustered into 28x28 cluster tokens after their block 9, i.e. before
# block 10 of 24 (0-based), by 5 soft k-means steps in 5x5-cell windows;
# every output is rebuilt from each token's 20 nearest clusters. Encoder
# GFLOPs, counted with the clustering and reconstruction: 70.0 % of the dense
# encoder's. Temperatures: relative to the mean squared token norm (see
# docs/peers.md), not the authors' raw 0.02.
_base_ = ['mmseg::segmenter/segmenter_vit-l_mask_8xb1-160k_ade20k-512x512.py']
custom_imports = dict(imports=['mmseg_pm.models'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        type='PMVisionTransformer',
        compression=dict(method='hourglass', alpha=10, clusters=(28, 28),
                         iters=5, window=5, k=20)))
