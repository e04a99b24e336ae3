# The tiny synthetic Segmenter with ToMe: every block merges r=8 tokens
# (65 -> 57 -> 49 -> 41 -> 33 tokens). Training-free: test the dense tiny
# checkpoint with this config.
_base_ = ['./segmenter_vit-tiny_mask_synthetic-ade-64x64.py']

model = dict(
    backbone=dict(
        type='PMVisionTransformer',
        compression=dict(method='tome', layers=[0, 1, 2, 3], r=8)))
