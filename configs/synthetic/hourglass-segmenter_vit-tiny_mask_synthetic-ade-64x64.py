# The tiny synthetic Segmenter with Expedite's Hourglass: the 8x8 patch
# tokens are clustered into 6x6 cluster tokens before block 2 (of 4; the
# authors cluster before block 10 of 24), and the full grid is rebuilt from
# the clusters at the output. Training-free: test the dense tiny checkpoint
# with this config.
_base_ = ['./segmenter_vit-tiny_mask_synthetic-ade-64x64.py']

model = dict(
    backbone=dict(
        type='PMVisionTransformer',
        compression=dict(method='hourglass', alpha=2, clusters=(6, 6),
                         iters=5, window=5, k=20)))
