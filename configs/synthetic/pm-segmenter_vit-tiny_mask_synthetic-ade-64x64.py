# The tiny synthetic Segmenter with Prune-and-Merge in blocks 1..3, keeping
# half of the 64 tokens as centres. Loads the dense tiny checkpoint as is.
_base_ = ['./segmenter_vit-tiny_mask_synthetic-ade-64x64.py']

model = dict(
    backbone=dict(
        type='PMVisionTransformer',
        compression=dict(
            mode='layer', layers=[1, 2, 3], keep_rate=0.5, prune_rate=0.0, reconstruct='residual',
            assign='content')))
