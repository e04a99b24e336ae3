# MSTM Segmenter ViT-S/16, mask transformer head, ADE20K 512x512: blocks 3, 6
# and 9 each keep the 70% most class-attended tokens and merge the rest into
# them (1024 -> 716 -> 501 -> 350 patch tokens); a zero-initialised 2x2
# coarse branch is fused in before block 3. Fine-tune from the dense
# checkpoint (mmseg's released Segmenter ViT-S): it lacks the branch's two
# weights, which start at zero with a warning; tools/test.py refuses it
# (docs/peers.md, "A dense checkpoint").
_base_ = ['mmseg::segmenter/segmenter_vit-s_mask_8xb1-160k_ade20k-512x512.py']
custom_imports = dict(imports=['mmseg_pm.models'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        type='PMVisionTransformer',
        compression=dict(
            method='mstm', prune_layers=[3, 6, 9], keep_rate=0.7,
            coarse=True)))
