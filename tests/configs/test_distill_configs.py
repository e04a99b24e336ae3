"""Every distillation config takes the shared schedule of
configs/distill/_base_/distill_schedule.py and ends up with the values the
configs carried before it existed (alpha, T, AdamW, poly schedule)."""
import pytest
from mmengine.config import Config

from tests.helpers import CONFIGS

DISTILL = sorted((CONFIGS / 'distill').glob('distill-*.py'))
SCHEDULE = CONFIGS / 'distill/_base_/distill_schedule.py'
ADAMW = dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.0)


def test_every_distill_config_is_checked():
    assert len(DISTILL) == 5


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
    [poly] = cfg.param_scheduler
    assert dict(poly) == dict(type='PolyLR', eta_min=0.0, power=1.0,
                              begin=0, end=cfg.train_cfg.max_iters,
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
    assert schedule.distill_param_scheduler[0].end == \
        schedule.distill_train_cfg.max_iters == 20000
