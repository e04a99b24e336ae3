# The tiny synthetic Segmenter with MSTM: blocks 1 and 2 keep 70% of the
# patch tokens (64 -> 44 -> 30) and merge the rest into them; the coarse
# branch starts at zero, so fine-tuning from the dense tiny checkpoint starts
# from the dense model with MSTM's merges (docs/peers.md, "A dense
# checkpoint").
_base_ = ['./segmenter_vit-tiny_mask_synthetic-ade-64x64.py']

model = dict(
    backbone=dict(
        type='PMVisionTransformer',
        compression=dict(
            method='mstm', prune_layers=[1, 2], keep_rate=0.7, coarse=True)))
