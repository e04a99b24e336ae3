# Distillation fine-tuning of the pruned tiny synthetic Segmenter (the demo's
# setting; docs/prune_and_merge.md section 4): teacher = the dense tiny
# Segmenter as tools/train.py writes it by default; alpha=1, T=20, AdamW lr
# 1e-4 warmed up over the first 10 % of the iterations; crops at the scale
# the model is evaluated at (docs/finetuning.md).
#   python tools/prune.py configs/synthetic/pm-segmenter_vit-tiny_mask_synthetic-ade-64x64.py \
#       work_dirs/segmenter_vit-tiny_mask_synthetic-ade-64x64/iter_400.pth \
#       --out work_dirs/pruned_tiny.pth --iters 20
#   python tools/train.py configs/distill/distill-pm-segmenter_vit-tiny_mask_synthetic-ade-64x64.py \
#       --cfg-options load_from=work_dirs/pruned_tiny.pth
_base_ = [
    '../synthetic/pm-segmenter_vit-tiny_mask_synthetic-ade-64x64.py',
    '_base_/distill_schedule.py'
]

model = dict(
    type='DistillEncoderDecoder',
    teacher_config='{{fileDirname}}/../synthetic/segmenter_vit-tiny_mask_synthetic-ade-64x64.py',  # noqa
    teacher_checkpoint='work_dirs/segmenter_vit-tiny_mask_synthetic-ade-64x64/iter_400.pth',  # noqa
    distill_alpha={{_base_.distill_alpha}},
    distill_temperature={{_base_.distill_temperature}})

# The dense model's zoom (0.75-1.5x) is left out: a short fine-tune on
# rescaled images drifts away from the scale it is tested at, which cost
# the study's compressed models up to 0.5 mIoU in 60 iterations.
train_dataloader = dict(dataset=dict(pipeline=[
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(128, 128), ratio_range=(1.0, 1.0),
         keep_ratio=True),
    dict(type='RandomCrop', crop_size={{_base_.crop_size}},
         cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]))

optim_wrapper = {{_base_.distill_optim_wrapper}}
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, begin=0, end=20,
         by_epoch=False),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=20, end=200,
         by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=200, val_interval=200)
default_hooks = dict(
    checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False,
                    interval=200))
