# Distillation fine-tuning of a pruned Segmenter (ViT-B/16, ADE20K 512x512).
# Student: the Prune-and-Merge model; teacher: mmseg's dense Segmenter and its
# released checkpoint, frozen. loss = CE + alpha * T^2 * KL per pixel with
# alpha=1, T=20 and AdamW at lr 1e-4, as the authors
# (docs/prune_and_merge.md section 4); the 20k-iteration schedule is our
# choice. Start from tools/prune.py's output:
#   python tools/train.py configs/distill/distill-pm-segmenter_vit-b_mask_8xb1-20k_ade20k-512x512.py \
#       --cfg-options load_from=PRUNED.pth
_base_ = [
    '../segmenter/pm-segmenter_vit-b_mask_8xb1-160k_ade20k-512x512.py',
    '_base_/distill_schedule.py'
]

model = dict(
    type='DistillEncoderDecoder',
    pretrained=None,  # load_from (the pruned checkpoint) sets every weight
    teacher_config='mmseg::segmenter/segmenter_vit-b_mask_8xb1-160k_ade20k-512x512.py',
    teacher_checkpoint='https://mmassets.onedl.ai/mmsegmentation/v0.5/segmenter/segmenter_vit-b_mask_8x1_512x512_160k_ade20k/segmenter_vit-b_mask_8x1_512x512_160k_ade20k_20220105_151706-bc533b08.pth',  # noqa
    distill_alpha={{_base_.distill_alpha}},
    distill_temperature={{_base_.distill_temperature}})

optim_wrapper = {{_base_.distill_optim_wrapper}}
param_scheduler = {{_base_.distill_param_scheduler}}
train_cfg = {{_base_.distill_train_cfg}}
default_hooks = {{_base_.distill_default_hooks}}
