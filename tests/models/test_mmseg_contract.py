"""mmseg's own backbone contract, held by PMVisionTransformer dense and with
every registered method.

The checks of mmsegmentation 1.x's ``tests/test_models/test_backbones/
test_vit.py`` (``test_vit_backbone`` and ``test_vit_init``), written anew
for this backbone: the output shapes of every input size, and for every
misuse the exception mmseg raises, which here is also the project's
:class:`UsageError` (so code written against mmseg still catches it and the
tools print it as one line). The model is narrower than mmseg's ViT-B
(the checks are about shapes and arguments, not width), on mmseg's 224 x 224
input with 16 x 16 patches.
"""
import inspect

import pytest
import torch
from mmseg.models.backbones import VisionTransformer
from torch import nn

import mmseg_pm.models  # noqa: F401
from mmseg_pm.compression.registry import (ModelShape, method_names,
                                           method_spec)
from mmseg_pm.models import PMVisionTransformer
from mmseg_pm.utils.errors import UsageError
from tests.helpers import TINY, randomise

WIDTH = dict(embed_dims=32, num_layers=4, num_heads=2)
SHAPE = ModelShape(num_tokens=14 * 14, num_layers=4, embed_dims=32)
MISSING = 'PATH_THAT_DOES_NOT_EXIST'


def compression(method):
    """The method's ``compression=`` at the middle of its knob (None:
    dense)."""
    if method is None:
        return None
    spec = method_spec(method)
    lo, hi = spec.knob_range(SHAPE)
    return spec.knob_compression((lo + hi) // 2, SHAPE)


def backbone(method, **kwargs) -> PMVisionTransformer:
    torch.manual_seed(0)
    return PMVisionTransformer(**WIDTH, compression=compression(method),
                               **kwargs)


def needs_class_token(method) -> bool:
    """MSTM ranks tokens by the class token's attention."""
    return method == 'mstm'


METHODS = [None] + method_names()
IDS = ['dense'] + method_names()


def assert_raises_both(kind, build):
    with pytest.raises(kind) as info:
        build()
    assert isinstance(info.value, UsageError), type(info.value).__mro__
    return str(info.value)


# ------------------------------------------------------ test_vit_backbone
@pytest.mark.parametrize('method', METHODS, ids=IDS)
def test_misuse_raises_what_mmseg_raises(method):
    comp = compression(method)

    def build(**kwargs):
        return PMVisionTransformer(**WIDTH, compression=comp, **kwargs)

    with pytest.raises(TypeError):  # init_weights takes no pretrained
        build().init_weights(pretrained=0)
    with pytest.raises(TypeError):  # resize_pos_embed takes 4 arguments
        PMVisionTransformer.resize_pos_embed(torch.randn(1, 196), 512, 512,
                                             224, 224, 'bilinear')
    assert 'img_size' in assert_raises_both(
        TypeError, lambda: build(img_size=512.0))
    assert 'out_indices' in assert_raises_both(
        TypeError, lambda: build(out_indices=1.))
    assert '1 or 2 entries' in assert_raises_both(
        AssertionError, lambda: build(img_size=(224, 224, 224)))
    assert 'pretrained' in assert_raises_both(
        TypeError, lambda: build(pretrained=123))
    assert 'with_cls_token=True' in assert_raises_both(
        AssertionError,
        lambda: build(with_cls_token=False, output_cls_token=True))


def check_output(model, size, grid, channels=32):
    feat = model(torch.randn(1, 3, *size))
    assert feat[-1].shape == (1, channels, *grid)


def size_case(size, grid):
    return pytest.param(size, grid, id=f'{size[0]}x{size[1]}')


@pytest.mark.parametrize('method', METHODS, ids=IDS)
def test_img_size_of_one_or_two_entries(method):
    model = backbone(method, img_size=(224, ))
    assert model.img_size == (224, 224)
    model.init_weights()
    check_output(model, (224, 224), (14, 14))
    check_output(backbone(method, img_size=(224, 224)), (224, 224), (14, 14))


@pytest.mark.parametrize('method', METHODS, ids=IDS)
def test_norm_eval_and_train_mode(method):
    model = backbone(method, norm_eval=True)
    model.train()
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert norms and not any(m.training for m in norms)
    model = backbone(method)
    model.init_weights()
    model.train()
    assert all(m.training for m in model.modules()
               if isinstance(m, nn.LayerNorm))


@pytest.mark.parametrize('method', METHODS, ids=IDS)
@pytest.mark.parametrize('size,grid', [
    size_case((224, 224), (14, 14)),
    size_case((32, 32), (2, 2)),
    size_case((112, 224), (7, 14)),
])
def test_inputs_up_to_the_training_size(method, size, grid):
    model = backbone(method)
    model.init_weights()
    model.train()
    check_output(model, size, grid)
    check_output(model, (224, 224), (14, 14))  # and back


@pytest.mark.parametrize('method', METHODS, ids=IDS)
@pytest.mark.parametrize('size,grid', [((256, 256), (16, 16)),
                                       ((234, 345), (15, 22))],
                         ids=['large', 'irregular'])
def test_inputs_larger_than_the_training_size(method, size, grid):
    model = backbone(method)
    model.init_weights()
    model.train()
    check_output(model, size, grid)


@pytest.mark.parametrize('method', METHODS, ids=IDS)
@pytest.mark.parametrize('option', [dict(with_cp=True),
                                    dict(final_norm=True),
                                    dict(patch_norm=True)],
                         ids=['with_cp', 'final_norm', 'patch_norm'])
def test_options(method, option):
    check_output(backbone(method, **option), (224, 224), (14, 14))


@pytest.mark.parametrize('method', METHODS, ids=IDS)
def test_without_class_token(method):
    if needs_class_token(method):  # refused clearly, at construction
        with pytest.raises(UsageError, match='needs with_cls_token=True'):
            backbone(method, with_cls_token=False)
        return
    check_output(backbone(method, with_cls_token=False), (224, 224),
                 (14, 14))


@pytest.mark.parametrize('method', METHODS, ids=IDS)
def test_output_cls_token(method):
    model = backbone(method, with_cls_token=True, output_cls_token=True)
    feat = model(torch.randn(1, 3, 224, 224))
    assert feat[0][0].shape == (1, 32, 14, 14)
    assert feat[0][1].shape == (1, 32)


# ---------------------------------------------------------- test_vit_init
@pytest.mark.parametrize('method', METHODS, ids=IDS)
def test_pretrained_and_init_cfg(method):
    pretrained = dict(type='Pretrained', checkpoint=MISSING)
    model = backbone(method, pretrained=None, init_cfg=None)
    assert model.init_cfg is None
    model.init_weights()

    model = backbone(method, pretrained=None, init_cfg=pretrained)
    assert model.init_cfg == pretrained
    with pytest.raises(OSError):
        model.init_weights()

    model = backbone(method, pretrained=None, init_cfg=123)
    with pytest.raises(TypeError):
        model.init_weights()

    model = backbone(method, pretrained=MISSING, init_cfg=None)
    assert model.init_cfg == pretrained
    with pytest.raises(OSError):
        model.init_weights()

    for given, init_cfg in ((MISSING, pretrained), (MISSING, 123),
                            (123, pretrained), (123, 123)):
        assert_raises_both(AssertionError, lambda: backbone(
            method, pretrained=given, init_cfg=init_cfg))
    assert_raises_both(TypeError, lambda: backbone(method, pretrained=123,
                                                   init_cfg=None))


# ------------------------------------------ every argument, its meaning
def test_every_argument_of_mmseg_is_taken_with_its_default():
    ours = inspect.signature(PMVisionTransformer.__init__).parameters
    theirs = inspect.signature(VisionTransformer.__init__).parameters
    for name, parameter in theirs.items():
        assert name in ours, name
        assert ours[name].default == parameter.default, name


@pytest.mark.parametrize('option', [
    dict(num_fcs=3), dict(patch_norm=True), dict(patch_bias=True),
    dict(qkv_bias=False), dict(mlp_ratio=2), dict(patch_pad=0),
    dict(interpolate_mode='bilinear'), dict(act_cfg=dict(type='ReLU')),
    dict(norm_cfg=dict(type='LN', eps=1e-3)), dict(with_cp=True),
    dict(in_channels=4), dict(pre_norm=True, final_norm=False),
    dict(out_origin=True, out_indices=[1, 3]),
], ids=lambda option: ','.join(option))
def test_every_argument_means_what_it_means_in_mmseg(option):
    """The dense backbone with an argument set computes mmseg's function
    with the same weights, also at another input size."""
    cfg = dict(TINY, **option)
    oracle = randomise(VisionTransformer(**cfg))
    oracle.eval()
    ours = PMVisionTransformer(**cfg).eval()
    assert list(oracle.state_dict()) == list(ours.state_dict())
    ours.load_state_dict(oracle.state_dict(), strict=True)
    channels = cfg.get('in_channels', 3)
    for size in ((48, 80), (64, 64)):
        x = torch.randn(2, channels, *size)
        with torch.no_grad():
            expected, got = oracle(x), ours(x)
        assert len(expected) == len(got)
        for e, o in zip(expected, got):
            assert (o - e).abs().max() <= 1e-4


def test_frozen_exclude_freezes_what_mmseg_freezes():
    cfg = dict(TINY, frozen_exclude=['pos_embed', 'layers.3'])
    oracle, ours = VisionTransformer(**cfg), PMVisionTransformer(**cfg)
    frozen = {n: p.requires_grad for n, p in oracle.named_parameters()}
    assert {n: p.requires_grad for n, p in ours.named_parameters()} == frozen
    assert 0 < sum(frozen.values()) < len(frozen)


def test_misuse_of_the_blocks_is_what_torch_and_mmcv_raise():
    """Heads that do not divide the width (torch's MultiheadAttention
    asserts) and fewer than two MLP layers (mmcv's FFN asserts)."""
    assert 'num_heads' in assert_raises_both(
        AssertionError, lambda: PMVisionTransformer(**dict(TINY,
                                                           num_heads=3)))
    assert 'num_fcs' in assert_raises_both(
        AssertionError, lambda: PMVisionTransformer(**dict(TINY, num_fcs=1)))
    with pytest.raises(AssertionError):
        VisionTransformer(**dict(TINY, num_fcs=1))
