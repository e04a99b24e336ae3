# Distillation fine-tuning of a pruned Segmenter (ViT-T/16, ADE20K 512x512).
# Student: the Prune-and-Merge model; teacher: mmseg's dense Segmenter and its
# released checkpoint, frozen. loss = CE + alpha * T^2 * KL per pixel with
# alpha=1, T=20 and AdamW at lr 1e-4, as the authors (DESIGN.md §2.4); the
# 20k-iteration schedule is our choice. Start from tools/prune.py's output:
#   python tools/train.py configs/distill/distill-pm-segmenter_vit-t_mask_8xb1-20k_ade20k-512x512.py \
#       --cfg-options load_from=PRUNED.pth
_base_ = ['../segmenter/pm-segmenter_vit-t_mask_8xb1-160k_ade20k-512x512.py']

model = dict(
    type='DistillEncoderDecoder',
    pretrained=None,  # load_from (the pruned checkpoint) sets every weight
    teacher_config='mmseg::segmenter/segmenter_vit-t_mask_8xb1-160k_ade20k-512x512.py',
    teacher_checkpoint='https://mmassets.onedl.ai/mmsegmentation/v0.5/segmenter/segmenter_vit-t_mask_8x1_512x512_160k_ade20k/segmenter_vit-t_mask_8x1_512x512_160k_ade20k_20220105_151706-ffcf7509.pth',  # noqa
    distill_alpha=1.0,
    distill_temperature=20.0)

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(
        _delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999),
        weight_decay=0.0))
param_scheduler = [
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=0, end=20000,
         by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=20000, val_interval=4000)
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=4000))
