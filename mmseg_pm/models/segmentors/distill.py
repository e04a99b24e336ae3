"""Fine-tuning a compressed segmentor by distillation from the dense one.

loss = CE(student, labels) + alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) per
pixel on the decoder logits (docs/prune_and_merge.md section 4; the authors use
alpha=1, T=20). The teacher is frozen, always in eval mode, and deliberately
not a submodule: it is not in the student's ``state_dict`` (so checkpoints hold
the student only and load into the plain Prune-and-Merge config), not in
``parameters()`` (so not in the optimizer) and not touched by ``init_weights``;
it still follows the student across devices.
"""
from __future__ import annotations

import copy
from typing import Union

import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmseg.models.segmentors import EncoderDecoder
from mmseg.models.utils import resize
from mmseg.registry import MODELS
from mmseg.utils import SampleList, add_prefix
from torch import Tensor, nn

from mmseg_pm.models.checkpoint import load_checkpoint_into


def pixel_distill_loss(student_logits: Tensor,
                       teacher_logits: Tensor,
                       labels: Tensor,
                       temperature: float,
                       ignore_index: int = 255,
                       align_corners: bool = False) -> Tensor:
    """``T^2 * mean over labelled pixels of KL(p_teacher || p_student)``.

    Both (B, C, h, w) logits are resized (bilinear, as mmseg's decode-head
    loss does) to the (B, 1, H, W) or (B, H, W) ``labels``; pixels labelled
    ``ignore_index`` do not count.
    """
    labels = labels.reshape(labels.shape[0], *labels.shape[-2:])
    size = labels.shape[-2:]
    student = resize(student_logits, size=size, mode='bilinear',
                     align_corners=align_corners)
    teacher = resize(teacher_logits.to(student.dtype), size=size,
                     mode='bilinear', align_corners=align_corners)
    kl = F.kl_div(F.log_softmax(student / temperature, dim=1),
                  F.log_softmax(teacher / temperature, dim=1),
                  reduction='none', log_target=True).sum(dim=1)
    valid = (labels != ignore_index).to(kl.dtype)
    return temperature**2 * (kl * valid).sum() / valid.sum().clamp(min=1)


def load_model_config(config: Union[str, dict]) -> dict:
    """The ``model`` dict of a config file (``mmseg::`` paths allowed), or a
    model dict itself."""
    if isinstance(config, dict):
        return copy.deepcopy(config)
    if not isinstance(config, str):
        raise TypeError('teacher_config must be a config file path or a '
                        f'model dict, got {type(config).__name__}')
    if config.startswith('mmseg::'):
        # mmengine resolves package scopes in _base_ (see config_scope.py)
        cfg = Config.fromstring(f'_base_ = [{config!r}]', '.py')
    else:
        cfg = Config.fromfile(config)
    if 'model' not in cfg:
        raise ValueError(f'teacher config {config} has no `model`')
    return cfg.model


@MODELS.register_module()
class DistillEncoderDecoder(EncoderDecoder):
    """An ``EncoderDecoder`` student trained with a frozen dense teacher.

    Args:
        teacher_config (str | dict): the teacher's config file (its `model`
            is built; e.g. mmseg's dense Segmenter config,
            ``'mmseg::segmenter/...'``) or its model dict.
        teacher_checkpoint (str): file or URL of the teacher's weights.
        distill_alpha (float): weight alpha of the distillation term.
        distill_temperature (float): softmax temperature T.
        **kwargs: the arguments of ``EncoderDecoder`` (the student).
    """

    def __init__(self,
                 teacher_config: Union[str, dict],
                 teacher_checkpoint: str,
                 distill_alpha: float = 1.0,
                 distill_temperature: float = 20.0,
                 **kwargs):
        super().__init__(**kwargs)
        if distill_alpha < 0:
            raise ValueError(f'distill_alpha must be >= 0, got {distill_alpha}')
        if distill_temperature <= 0:
            raise ValueError('distill_temperature must be > 0, got '
                             f'{distill_temperature}')
        if not teacher_checkpoint:
            raise ValueError(
                'DistillEncoderDecoder needs teacher_checkpoint (the dense '
                'model\'s weights); set model.teacher_checkpoint in the '
                'config or --cfg-options model.teacher_checkpoint=PATH')
        self.distill_alpha = distill_alpha
        self.distill_temperature = distill_temperature
        # object.__setattr__ keeps the teacher out of the module tree.
        object.__setattr__(self, 'teacher',
                           self._build_teacher(teacher_config,
                                               teacher_checkpoint))

    def _build_teacher(self, config, checkpoint: str) -> nn.Module:
        teacher = MODELS.build(load_model_config(config))
        load_checkpoint_into(teacher, checkpoint,
                             source=f'teacher_checkpoint {checkpoint}')
        teacher.eval().requires_grad_(False)
        if teacher.decode_head.out_channels != self.decode_head.out_channels:
            raise ValueError(
                f'teacher predicts {teacher.decode_head.out_channels} classes'
                f', student {self.decode_head.out_channels}')
        for name in ('mean', 'std'):
            ours = getattr(self.data_preprocessor, name, None)
            theirs = getattr(teacher.data_preprocessor, name, None)
            if ours is not None and theirs is not None and \
                    not torch.equal(ours, theirs):
                raise ValueError(
                    f'teacher and student normalise images differently '
                    f'({name} {theirs.flatten().tolist()} vs '
                    f'{ours.flatten().tolist()}); the teacher sees the '
                    "student's preprocessed inputs, so use the same "
                    'data_preprocessor')
        return teacher

    def _apply(self, fn, recurse=True):
        # .to()/.cuda()/.half() reach the teacher although it is no child.
        super()._apply(fn, recurse)
        self.teacher._apply(fn, recurse)
        return self

    def loss(self, inputs: Tensor, data_samples: SampleList) -> dict:
        """Student losses plus ``decode.loss_distill``."""
        x = self.extract_feat(inputs)
        student_logits = self.decode_head.forward(x)
        losses = add_prefix(
            self.decode_head.loss_by_feat(student_logits, data_samples),
            'decode')
        with torch.no_grad():
            self.teacher.eval()
            teacher_logits = self.teacher.decode_head.forward(
                self.teacher.extract_feat(inputs))
        labels = self.decode_head._stack_batch_gt(data_samples)
        losses['decode.loss_distill'] = self.distill_alpha * \
            pixel_distill_loss(student_logits, teacher_logits, labels,
                               self.distill_temperature,
                               self.decode_head.ignore_index,
                               self.decode_head.align_corners)
        if self.with_auxiliary_head:
            losses.update(self._auxiliary_head_forward_train(x, data_samples))
        return losses
