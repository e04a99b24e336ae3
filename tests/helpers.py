"""Plain helpers shared by the test packages (fixtures are in conftest.py):
paths, the tiny backbone and segmentor configurations, generated batches
and the block FLOP formula. Import as ``from tests.helpers import ...``."""
import hashlib
import importlib
from pathlib import Path
from typing import Optional, Sequence, Tuple

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

import mmseg_pm.models  # noqa: F401  (registers our modules, mmseg:: scope)
from mmseg_pm.compression import build_structure
from mmseg_pm.models import PMVisionTransformer

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / 'configs'
DENSE_TINY = CONFIGS / 'synthetic/segmenter_vit-tiny_mask_synthetic-ade-64x64.py'  # noqa: E501
PM_TINY = CONFIGS / 'synthetic/pm-segmenter_vit-tiny_mask_synthetic-ade-64x64.py'  # noqa: E501


def module_path(dotted: str) -> Optional[Path]:
    """The file of the repository's module ``dotted`` (``a.b``: ``a/b.py``
    or ``a/b/__init__.py``), or None."""
    path = ROOT.joinpath(*dotted.split('.'))
    for candidate in (path.with_suffix('.py'), path / '__init__.py'):
        if candidate.is_file():
            return candidate
    return None

# ------------------------------------------------------------- backbone
# A 4-block backbone on a non-square 3 x 5 token grid (48 x 80 px).
TINY = dict(img_size=(48, 80), patch_size=16, embed_dims=32, num_layers=4,
            num_heads=2, final_norm=True, drop_path_rate=0.0,
            norm_cfg=dict(type='LN', eps=1e-6, requires_grad=True),
            interpolate_mode='bicubic')
GRID = (3, 5)


def tiny_pm(**kwargs) -> PMVisionTransformer:
    """The TINY backbone (``kwargs`` override), seeded, in eval mode."""
    cfg = dict(TINY, **kwargs)
    torch.manual_seed(0)
    model = PMVisionTransformer(**cfg)
    model.init_weights()
    return model.eval()


def randomise(model):
    """Random non-trivial values for every parameter (LN too)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if 'token_compressors' not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2 +
                        (1.0 if name.endswith('ln1.weight') or
                         name.endswith('ln2.weight') else 0.0))
    return model


def pruned_structure(grid=GRID, seed=0):
    """A structure with centres, merged and pruned tokens and uneven
    weights."""
    n = grid[0] * grid[1]
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    centres, pruned = order[:n // 3], order[n // 3:n // 3 + 3]
    scores = torch.rand(n, generator=g) + 0.1
    scores[centres] += 1.0
    return build_structure(grid, centres, pruned, scores)


def token_counts(model, x):
    """Tokens each block's attention and MLP see, recorded by hooks."""
    seen = []
    hooks = [m.register_forward_pre_hook(
        lambda _, args, i=i, part=part: seen.append((i, part,
                                                     args[0].shape[1])))
        for i, layer in enumerate(model.layers)
        for part, m in (('attn', layer.ln1), ('mlp', layer.ln2))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return [n for _, _, n in seen]


def source_maps(model, x):
    """Runs ``model`` and returns its outputs and the source map after its
    last block (the reducer's opt-in trace)."""
    reducer = model.reducer
    reducer.trace_source = True
    try:
        with torch.no_grad():
            outs = model(x)
    finally:
        reducer.trace_source = False
    return outs, reducer.sources[len(model.layers) - 1]


def assert_each_image_merges_its_own_way(model, x):
    """The source maps of a batch: the class token stays alone, images
    merge differently, and each image alone gives its own map and
    outputs (to 1e-5)."""
    outs, source = source_maps(model, x)
    assert source.shape == (x.shape[0], 16)
    assert (source[:, 0] == 0).all()  # the class token stays alone
    for a, b in zip(source, source[1:]):
        assert not torch.equal(a, b)
    for b in range(x.shape[0]):
        single, single_source = source_maps(model, x[b:b + 1])
        assert torch.equal(single_source[0], source[b])
        for o, s in zip(outs, single):
            assert (o[b] - s[0]).abs().max() <= 1e-5


def block_flops(attn_tokens: Sequence[int], mlp_tokens: Sequence[int],
                channels: int, batch: int) -> int:
    """Multiply-adds x 2 of ViT blocks (MLP ratio 4) whose attention sees
    ``attn_tokens[i]`` tokens and MLP ``mlp_tokens[i]``: QKV and output
    projections 8tC^2, attention 4t^2C, MLP 16uC^2."""
    c = channels
    return sum(batch * (8 * t * c * c + 4 * t * t * c + 16 * u * c * c)
               for t, u in zip(attn_tokens, mlp_tokens))


def assert_flops_follow_token_counts(dense, model, counts, x) -> None:
    """On TINY backbones: the FLOPs ``model`` saves against ``dense`` on
    ``x`` are what its tokens after each block's merge (``counts``) save
    in the blocks, less the matching and merging (< 1 % of dense)."""
    from mmseg_pm.utils.flops import count_flops

    n = GRID[0] * GRID[1] + 1  # and the class token
    layers = TINY['num_layers']

    def blocks(attn_tokens, mlp_tokens):
        return block_flops(attn_tokens, mlp_tokens, TINY['embed_dims'],
                           x.shape[0])

    saved = blocks([n] * layers, [n] * layers) - \
        blocks([n] + counts[:-1], counts)
    cut = count_flops(dense, x) - count_flops(model, x)
    assert saved > cut > saved - 0.01 * count_flops(dense, x)


# ------------------------------------------------------------ segmentor
def preprocessor(size: Tuple[int, int]) -> dict:
    return dict(type='SegDataPreProcessor', mean=[127.5] * 3,
                std=[127.5] * 3, bgr_to_rgb=True, pad_val=0,
                seg_pad_val=255, size=size)


def tiny_segmentor_cfg(img_size: Tuple[int, int], num_classes: int,
                       backbone_type: str = 'PMVisionTransformer',
                       patch_size: int = 16, embed_dims: int = 32,
                       num_layers: int = 3, **backbone) -> dict:
    """An EncoderDecoder: a small ViT (``backbone`` overrides) and a
    one-layer Segmenter mask head, whole-image inference."""
    return dict(
        type='EncoderDecoder',
        data_preprocessor=preprocessor(img_size),
        backbone=dict(type=backbone_type, img_size=img_size,
                      patch_size=patch_size, embed_dims=embed_dims,
                      num_layers=num_layers, num_heads=2, final_norm=True,
                      **backbone),
        decode_head=dict(
            type='SegmenterMaskTransformerHead', in_channels=embed_dims,
            channels=embed_dims, num_classes=num_classes, num_layers=1,
            num_heads=2, embed_dims=embed_dims, dropout_ratio=0.0,
            loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0)),
        test_cfg=dict(mode='whole'))


def segmentation_batches(num: int, batch_size: int, size: Tuple[int, int],
                         num_classes: int, seed: int,
                         ignored_rows: int = 4) -> list:
    """``num`` batches as mmseg's dataloaders yield them: uint8 images and
    random labels whose first ``ignored_rows`` rows are ignored (255)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num):
        inputs, samples = [], []
        for _ in range(batch_size):
            inputs.append(torch.randint(0, 256, (3, *size), generator=g,
                                        dtype=torch.uint8))
            label = torch.randint(0, num_classes, (1, *size), generator=g)
            label[:, :ignored_rows] = 255
            sample = SegDataSample()
            sample.gt_sem_seg = PixelData(data=label)
            sample.set_metainfo(dict(img_shape=size, ori_shape=size,
                                     pad_shape=size))
            samples.append(sample)
        out.append(dict(inputs=inputs, data_samples=samples))
    return out


# The synthetic Segmenter shrunk to 2 blocks of width 32: the ``model``
# lines of a config inheriting DENSE_TINY.
SHRUNK_MODEL = """_base_ = ['{base}']
model = dict(
    backbone=dict(type='{backbone}', embed_dims=32, num_layers=2,
                  num_heads=2{compression}),
    decode_head=dict(in_channels=32, channels=32, embed_dims=32,
                     num_classes={num_classes}, num_layers=1))
"""


def shrunk_config_text(compression: Optional[str],
                       num_classes: int) -> str:
    """SHRUNK_MODEL filled in: mmseg's VisionTransformer without
    compression, ours with ``compression`` (config source text)."""
    return SHRUNK_MODEL.format(
        base=DENSE_TINY, num_classes=num_classes,
        backbone='VisionTransformer' if compression is None
        else 'PMVisionTransformer',
        compression='' if compression is None
        else f', compression={compression}')


def build_from_config(config) -> torch.nn.Module:
    """The config file's model, seeded and initialised."""
    init_default_scope('mmseg')
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(str(config)).model)
    model.init_weights()
    return model


def data_options(root, batch_size: int = 2) -> list:
    """--cfg-options pointing every dataloader at a generated data root."""
    return [f'{s}_dataloader.dataset.data_root={root}'
            for s in ('train', 'val', 'test')] + \
        [f'train_dataloader.batch_size={batch_size}']


def cli_module(name: str):
    """The command-line module behind tools/<name>.py."""
    return importlib.import_module(f'mmseg_pm.cli.{name}')


# the shrunk Segmenter's tools-level world: 2 blocks of width 32 trained
# 2 iterations on generated data, with and without a PM unit at block 1
SHRUNK_DATA = """\
train_dataloader = dict(batch_size=2, dataset=dict(data_root='{data}'))
val_dataloader = dict(dataset=dict(data_root='{data}'))
test_dataloader = dict(dataset=dict(data_root='{data}'))
train_cfg = dict(max_iters=2, val_interval=2)
param_scheduler = [dict(type='PolyLR', eta_min=1e-5, power=1.0, begin=0,
                        end=2, by_epoch=False)]
"""
SHRUNK_PM = "dict(mode='layer', layers=[1], keep_rate=0.5)"


def write_shrunk_config(path: Path, data_root, compression=None) -> Path:
    """A config file of the shrunk Segmenter reading ``data_root``."""
    path.write_text(shrunk_config_text(compression, num_classes=150) +
                    SHRUNK_DATA.format(data=data_root))
    return path


def shrunk_world(tmp: Path) -> dict:
    """Generated data (2 training, 1 validation image), the shrunk dense
    and Prune-and-Merge configs on it and a checkpoint of each."""
    from mmseg_pm.datasets import make_synthetic_ade
    data = make_synthetic_ade(tmp / 'data', num_train=2, num_val=1,
                              size=(64, 64), seed=1, progress=False)
    world = dict(tmp=tmp, data=data, root=Path(data['root']),
                 dense_cfg=write_shrunk_config(tmp / 'dense.py',
                                               data['root']),
                 pm_cfg=write_shrunk_config(tmp / 'pm.py', data['root'],
                                            SHRUNK_PM))
    for name, config in (('dense', 'dense_cfg'), ('pruned', 'pm_cfg')):
        world[name] = tmp / f'{name}.pth'
        torch.save(dict(meta={},
                        state_dict=build_from_config(world[config])
                        .state_dict()), world[name])
    return world


def snapshot(folder: Path) -> dict:
    """Every file below ``folder`` by its content hash."""
    return {p: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob('*') if p.is_file()}


def refused(module, argv, capsys):
    """Run a tool expecting a refusal; returns its one-line message."""
    with pytest.raises(SystemExit) as info:
        module.main([str(a) for a in argv])
    code = info.value.code
    assert code not in (0, None)
    return code if isinstance(code, str) else capsys.readouterr().err


def assert_compiled_unit_matches_eager(compressor, block) -> None:
    """Inductor on one compressed block with its merge and reconstruct
    (the whole backbone compiles the same ops; it only takes longer)."""
    def unit(tokens):
        merged, context = compressor.merge(tokens, 1)
        return compressor.reconstruct(block(merged), context, 1)

    tokens = torch.randn(2, 16, 32)
    torch._dynamo.reset()
    compiled = torch.compile(unit, fullgraph=True, dynamic=False)
    with torch.no_grad():
        assert torch.allclose(compiled(tokens), unit(tokens), atol=1e-5)


def write_image(path: Path, hw: Tuple[int, int] = (96, 128)) -> Path:
    """A seeded random RGB picture of ``hw`` pixels at ``path``."""
    import mmcv
    import numpy as np
    mmcv.imwrite(np.random.default_rng(0).integers(0, 255, (*hw, 3),
                                                    np.uint8), str(path))
    return path


def visualize(config, checkpoint, image, out, *options):
    """tools/visualize_tokens.py on these files; returns its token maps."""
    return cli_module('visualize_tokens').main(
        [str(config), str(checkpoint), str(image), '--out', str(out),
         *map(str, options)])
