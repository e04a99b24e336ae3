"""Every distillation config takes the shared schedule of
configs/distill/_base_/distill_schedule.py and ends up with the values the
configs carried before it existed (alpha, T, AdamW, poly schedule), with a
linear warm-up over the first 10 % of the iterations."""
import pytest
from mmengine.config import Config

from tests.helpers import CONFIGS

DISTILL = sorted((CONFIGS / 'distill').glob('distill-*.py'))
SCHEDULE = CONFIGS / 'distill/_base_/distill_schedule.py'
ADAMW = dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.0)


def test_every_distill_config_is_checked():
    """The parametrised test below sees every config of configs/distill
    (none is left out by its name), and each one distils a student config
    of this project that exists (its first base)."""
    every = sorted(p for p in (CONFIGS / 'distill').rglob('*.py')
                   if '_base_' not in p.relative_to(CONFIGS).parts)
    assert every == DISTILL and DISTILL
    for path in DISTILL:
        student = (path.parent / Config._get_base_files(str(path))[0])
        assert student.resolve().is_file(), student
        assert student.resolve().parent.parent == CONFIGS.resolve()


@pytest.mark.parametrize('path', DISTILL, ids=lambda p: p.stem)
def test_distill_config_takes_the_shared_schedule(path):
    assert "'_base_/distill_schedule.py'" in path.read_text()
    cfg = Config.fromfile(str(path))
    assert cfg.model.type == 'DistillEncoderDecoder'
    assert cfg.model.distill_alpha == 1.0
    assert cfg.model.distill_temperature == 20.0
    assert cfg.model.backbone.type == 'PMVisionTransformer'  # the student
    assert cfg.optim_wrapper.type == 'OptimWrapper'
    # _delete_ replaced the student's SGD: no momentum or other key left
    assert dict(cfg.optim_wrapper.optimizer) == ADAMW
    warm, poly = cfg.param_scheduler
    warm_end = cfg.train_cfg.max_iters // 10
    assert dict(warm) == dict(type='LinearLR', start_factor=1e-3, begin=0,
                              end=warm_end, by_epoch=False)
    assert dict(poly) == dict(type='PolyLR', eta_min=0.0, power=1.0,
                              begin=warm_end, end=cfg.train_cfg.max_iters,
                              by_epoch=False)
    tiny = 'synthetic' in path.name
    train_cfg = {k: v for k, v in cfg.train_cfg.items() if k != '_scope_'}
    assert train_cfg == dict(type='IterBasedTrainLoop',
                             max_iters=200 if tiny else 20000,
                             val_interval=200 if tiny else 4000)
    assert cfg.default_hooks.checkpoint.interval == (200 if tiny else 4000)
    assert cfg.default_hooks.checkpoint.type == 'AtomicCheckpointHook'


def test_the_schedule_holds_the_authors_values():
    schedule = Config.fromfile(str(SCHEDULE))
    assert (schedule.distill_alpha, schedule.distill_temperature) == \
        (1.0, 20.0)
    assert schedule.distill_optim_wrapper.optimizer.lr == 1e-4
    assert schedule.distill_param_scheduler[-1].end == \
        schedule.distill_train_cfg.max_iters == 20000


def test_the_tiny_distillation_crops_at_the_evaluation_scale():
    """The synthetic fine-tune keeps the dense model's crops and flips but
    not its zoom: the images are resized as the test pipeline resizes
    them."""
    [tiny] = [p for p in DISTILL if 'synthetic' in p.name]
    cfg = Config.fromfile(str(tiny))
    train = {s['type']: s for s in cfg.train_dataloader.dataset.pipeline}
    test = {s['type']: s for s in cfg.test_dataloader.dataset.pipeline}
    assert train['RandomResize']['ratio_range'] == (1.0, 1.0)
    assert train['RandomResize']['scale'] == test['Resize']['scale']
    assert train['RandomCrop']['crop_size'] == cfg.crop_size
    assert 'RandomFlip' in train
