# Prune-and-Merge Segmenter ViT-L/16, mask transformer head, ADE20K 512x512:
# mmseg's ViT-B 512x512 setting with the ViT-L encoder and its pretrained
# weights (mmseg has no ViT-L 512 config of its own).
_base_ = ['mmseg::segmenter/segmenter_vit-b_mask_8xb1-160k_ade20k-512x512.py']
custom_imports = dict(imports=['mmseg_pm.models'], allow_failed_imports=False)

checkpoint = 'https://mmassets.onedl.ai/mmsegmentation/v0.5/pretrain/segmenter/vit_large_p16_384_20220308-d4efb41d.pth'  # noqa
model = dict(
    pretrained=checkpoint,
    backbone=dict(
        type='PMVisionTransformer',
        embed_dims=1024,
        num_layers=24,
        num_heads=16,
        compression=dict(
            mode='layer', layers=list(range(4, 24)), keep_rate=0.7,
            prune_rate=0.0, reconstruct='residual',
            assign='content')),
    decode_head=dict(
        in_channels=1024, channels=1024, num_heads=16, embed_dims=1024))
