# Prune-and-Merge Segmenter ViT-S/16 in span mode: merge once before block 2,
# run blocks 2..6 and 7..11 on the centres, reconstruct after each span.
_base_ = ['./pm-segmenter_vit-s_mask_8xb1-160k_ade20k-512x512.py']

model = dict(
    backbone=dict(
        compression=dict(
            _delete_=True, mode='span', spans=[(2, 6), (7, 11)],
            keep_rate=0.7, prune_rate=0.0, reconstruct='residual',
            assign='content')))
