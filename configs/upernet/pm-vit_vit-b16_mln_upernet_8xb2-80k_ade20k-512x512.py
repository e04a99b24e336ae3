# Prune-and-Merge ViT-B/16 + MultiLevelNeck + UPerNet, ADE20K 512x512: four
# outputs (blocks 2, 5, 8, 11), each the full grid although blocks 3..11 run
# on merged tokens.
_base_ = ['mmseg::vit/vit_vit-b16_mln_upernet_8xb2-80k_ade20k-512x512.py']
custom_imports = dict(imports=['mmseg_pm.models'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        type='PMVisionTransformer',
        compression=dict(
            mode='layer', layers=list(range(3, 12)), keep_rate=0.7,
            prune_rate=0.0, reconstruct='residual',
            assign='content')))
