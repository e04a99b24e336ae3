# The tiny synthetic Segmenter with MPM: mutual nearest-neighbour pairs of
# the 8x8 patch tokens are averaged before blocks 1 and 2 of 4 (the authors'
# blocks 2 and 5 of 12 at the same relative depth: 4 * 2 / 12 = 0.67 and
# 4 * 5 / 12 = 1.67, rounded). Training-free: test the dense tiny checkpoint
# with this config.
_base_ = ['./segmenter_vit-tiny_mask_synthetic-ade-64x64.py']

model = dict(
    backbone=dict(
        type='PMVisionTransformer',
        compression=dict(method='mpm', layers=(1, 2))))
