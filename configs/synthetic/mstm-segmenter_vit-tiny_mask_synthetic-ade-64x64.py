# The tiny synthetic Segmenter with MSTM: blocks 1 and 2 keep 70% of the
# patch tokens (64 -> 44 -> 30) and merge the rest into them; the coarse
# branch starts at zero, so the dense tiny checkpoint loads and runs as is.
_base_ = ['./segmenter_vit-tiny_mask_synthetic-ade-64x64.py']

model = dict(
    backbone=dict(
        type='PMVisionTransformer',
        compression=dict(
            method='mstm', prune_layers=[1, 2], keep_rate=0.7, coarse=True)))
