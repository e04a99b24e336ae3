"""Distillation fine-tuning: the loss and the frozen teacher
(docs/prune_and_merge.md section 4)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

import mmseg_pm.models  # noqa: F401
from mmseg_pm.models.segmentors import pixel_distill_loss
from tests.helpers import (preprocessor, segmentation_batches,
                           tiny_segmentor_cfg)

IMG = (32, 48)
NUM_CLASSES = 4
PREPROCESSOR = preprocessor(IMG)


def segmentor(backbone_type='VisionTransformer', **backbone):
    return tiny_segmentor_cfg(IMG, NUM_CLASSES, backbone_type, patch_size=8,
                              embed_dims=16, num_layers=2, **backbone)


def reference_kd(student, teacher, labels, t, ignore=255):
    """KL(softmax(teacher/T) || softmax(student/T)) * T^2, averaged over the
    labelled pixels, written out term by term."""
    size = labels.shape[-2:]
    s = F.interpolate(student, size, mode='bilinear', align_corners=False)
    q = F.interpolate(teacher, size, mode='bilinear', align_corners=False)
    p_t = torch.softmax(q / t, dim=1)
    p_s = torch.softmax(s / t, dim=1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(dim=1)
    valid = labels[:, 0] != ignore
    return kl[valid].mean() * t * t


def test_pixel_distill_loss_by_hand():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 4, 6, generator=g) * 5
    teacher = torch.randn(2, 3, 4, 6, generator=g) * 5
    labels = torch.randint(0, 3, (2, 1, 8, 12), generator=g)
    labels[0, 0, :3] = 255
    for t in (1.0, 20.0):
        got = pixel_distill_loss(student, teacher, labels, t)
        torch.testing.assert_close(got, reference_kd(student, teacher,
                                                     labels, t))
    assert pixel_distill_loss(teacher, teacher, labels, 20.0).abs() < 1e-6
    # ignored pixels do not count: change the logits only where ignored
    labels[:, :, 4:] = 255  # bottom half of every image ignored
    moved = student.clone()
    moved[:, 0, 3:] += 10  # logit row 3 only reaches output rows 5-7
    torch.testing.assert_close(
        pixel_distill_loss(moved, teacher, labels, 2.0),
        pixel_distill_loss(student, teacher, labels, 2.0))
    moved[:, 0, 1] += 10  # a labelled row: the loss changes
    assert not torch.allclose(pixel_distill_loss(moved, teacher, labels, 2.0),
                              pixel_distill_loss(student, teacher, labels,
                                                 2.0))


def batch(batch_size=2):
    return segmentation_batches(1, batch_size, IMG, NUM_CLASSES, seed=3,
                                ignored_rows=5)[0]


@pytest.fixture(scope='module')
def teacher_checkpoint(tmp_path_factory):
    init_default_scope('mmseg')
    torch.manual_seed(0)
    teacher = MODELS.build(segmentor())
    teacher.init_weights()
    path = tmp_path_factory.mktemp('teacher') / 'dense.pth'
    torch.save(dict(meta=dict(), state_dict=teacher.state_dict()), path)
    return path, teacher.eval()


def distill_cfg(teacher_path, **kwargs):
    cfg = segmentor('PMVisionTransformer',
                    compression=dict(mode='layer', layers=[1],
                                     keep_rate=0.5))
    cfg.update(type='DistillEncoderDecoder', teacher_config=segmentor(),
               teacher_checkpoint=str(teacher_path), distill_alpha=0.5,
               distill_temperature=4.0, **kwargs)
    return cfg


def test_student_loss_is_ce_plus_alpha_kd_and_the_teacher_stays_out(
        teacher_checkpoint):
    path, teacher = teacher_checkpoint
    init_default_scope('mmseg')
    torch.manual_seed(1)
    model = MODELS.build(distill_cfg(path))
    model.init_weights()
    model.train()
    # the teacher: loaded, frozen, eval, and not part of the student
    assert all(torch.equal(a, b) for a, b in zip(
        model.teacher.state_dict().values(), teacher.state_dict().values()))
    assert not model.teacher.training
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert not any(k.startswith('teacher') for k in model.state_dict())
    student_params = {id(p) for p in model.parameters()}
    assert not student_params & {id(p) for p in model.teacher.parameters()}
    wrapper = build_optim_wrapper(model, dict(
        type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4)))
    in_optimizer = [p for g in wrapper.optimizer.param_groups
                    for p in g['params']]
    assert {id(p) for p in in_optimizer} == student_params

    data = model.data_preprocessor(batch(), training=True)
    losses = model(**data, mode='loss')
    # the CE part is EncoderDecoder's own loss of the student
    plain = super(type(model), model).loss(data['inputs'],
                                           data['data_samples'])
    torch.testing.assert_close(losses['decode.loss_ce'],
                               plain['decode.loss_ce'])
    # the KD part against an independently run teacher
    with torch.no_grad():
        student_logits = model.decode_head(model.extract_feat(data['inputs']))
        teacher_logits = teacher.decode_head(
            teacher.extract_feat(data['inputs']))
    labels = torch.stack([s.gt_sem_seg.data for s in data['data_samples']])
    expected = 0.5 * reference_kd(student_logits, teacher_logits, labels, 4.0)
    torch.testing.assert_close(losses['decode.loss_distill'], expected)
    assert expected > 0

    loss, _ = model.parse_losses(losses)
    loss.backward()
    assert model.backbone.layers[0].ffn.layers[1].weight.grad is not None
    assert all(p.grad is None for p in model.teacher.parameters())


def test_checkpoint_of_the_student_loads_into_the_plain_config(
        teacher_checkpoint):
    """The distilled model's checkpoint holds the student alone (no
    teacher weights), loads into the config without distillation with
    every key matched, and that model computes the student's logits."""
    path, _ = teacher_checkpoint
    init_default_scope('mmseg')
    torch.manual_seed(2)
    model = MODELS.build(distill_cfg(path))
    model.init_weights()
    state = model.state_dict()
    assert not any(k.startswith('teacher') for k in state)
    plain_cfg = copy.deepcopy(distill_cfg(path))
    for key in ('teacher_config', 'teacher_checkpoint', 'distill_alpha',
                'distill_temperature'):
        plain_cfg.pop(key)
    plain_cfg['type'] = 'EncoderDecoder'
    plain = MODELS.build(plain_cfg)
    result = plain.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = model.data_preprocessor(batch(), False)['inputs']
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x, mode='tensor'),
                                   model.eval()(x, mode='tensor'))


def test_bad_teacher_settings_are_refused(teacher_checkpoint, tmp_path):
    path, _ = teacher_checkpoint
    init_default_scope('mmseg')
    with pytest.raises(FileNotFoundError, match='checkpoint file not found'):
        MODELS.build(distill_cfg(tmp_path / 'missing.pth'))
    with pytest.raises(ValueError, match='teacher_checkpoint'):
        MODELS.build(distill_cfg(''))
    with pytest.raises(ValueError, match='distill_temperature'):
        MODELS.build(dict(distill_cfg(path), distill_temperature=0))
    other = segmentor()
    other['data_preprocessor'] = dict(PREPROCESSOR, mean=[0.0] * 3)
    with pytest.raises(ValueError, match='normalise images differently'):
        MODELS.build(dict(distill_cfg(path), teacher_config=other))
