# Prune and Merge on Segmenter ViT-S with proportional attention: each
# merged token's attention logit gets the log of its window's size
# (docs/usage.md). Everything else is the default config's.
_base_ = './pm-segmenter_vit-s_mask_8xb1-160k_ade20k-512x512.py'
model = dict(backbone=dict(compression=dict(proportional_attention=True)))
