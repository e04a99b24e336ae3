# The distillation fine-tuning shared by every configs/distill/ config
# (docs/prune_and_merge.md section 4): loss = CE + alpha * T^2 * KL per pixel
# with alpha=1, T=20 and AdamW at lr 1e-4, as the authors; a 20k-iteration
# poly schedule (our choice) with a checkpoint every 4k. The distill configs
# inherit this file next to their student's config and take these values
# with {{_base_.distill_...}} (mmengine refuses one key in two bases, so the
# names differ from the student's optim_wrapper, param_scheduler, ...).
# The learning rate warms up linearly over the first 10 % of the iterations
# (docs/finetuning.md): Adam's first update moves every weight by about the
# full learning rate whatever its gradient, which costs a good compressed
# model (and the dense one) most of a mIoU point in one iteration.
distill_alpha = 1.0
distill_temperature = 20.0
distill_optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(
        _delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999),
        weight_decay=0.0))
distill_param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, begin=0, end=2000,
         by_epoch=False),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=2000, end=20000,
         by_epoch=False)
]
distill_train_cfg = dict(type='IterBasedTrainLoop', max_iters=20000,
                         val_interval=4000)
distill_default_hooks = dict(
    checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False,
                    interval=4000))
