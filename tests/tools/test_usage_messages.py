"""Refusals that used to be a traceback or a misleading line (issue 18),
through the real command lines: each names the problem and the fix, exits
non-zero and leaves nothing behind."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmseg_pm.datasets import make_synthetic_ade
from tests.helpers import CONFIGS, DENSE_TINY, PM_TINY, build_from_config
from tests.helpers import cli_module as tool

TOME_TINY = CONFIGS / 'synthetic/tome-segmenter_vit-tiny_mask_synthetic-ade-64x64.py'  # noqa: E501


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """Generated data under a folder whose name has a space, a dense and a
    Prune-and-Merge checkpoint of the tiny configs, a JPEG."""
    tmp = tmp_path_factory.mktemp('usage')
    data = make_synthetic_ade(tmp / 'my data', num_train=2, num_val=1,
                              size=(64, 64), seed=1, progress=False)
    dense, pruned = tmp / 'dense.pth', tmp / 'pruned.pth'
    torch.save(dict(meta={}, state_dict=build_from_config(
        DENSE_TINY).state_dict()), dense)
    torch.save(dict(meta={}, state_dict=build_from_config(
        PM_TINY).state_dict()), pruned)
    image = sorted(Path(data['validation_img_dir']).glob('*.jpg'))[0]
    return dict(tmp=tmp, root=data['root'], dense=dense, pruned=pruned,
                image=image)


def refused(name, argv, capsys):
    """Run tools/<name>.py expecting a refusal; its message."""
    with pytest.raises(SystemExit) as info:
        tool(name).main([str(a) for a in argv])
    code = info.value.code
    assert code not in (0, None)
    return code if isinstance(code, str) else capsys.readouterr().err


def options(root):
    return [f'{s}_dataloader.dataset.data_root={root}'
            for s in ('train', 'val', 'test')]


BAD = 'model.backbone.compression.prune_rate=1.0'


def test_bad_compression_is_one_line_in_every_tool(world, tmp_path, capsys):
    out = tmp_path / 'out'
    calls = dict(
        test=[PM_TINY, world['dense'], '--work-dir', out],
        train=[PM_TINY, '--work-dir', out],
        export_onnx=[PM_TINY, world['dense'], '--out', out / 'm.onnx'],
        visualize_tokens=[PM_TINY, world['dense'], world['image'], '--out',
                          out / 'v.png'])
    for name, argv in calls.items():
        message = refused(name, argv + ['--cfg-options', BAD] +
                          options(world['root']), capsys)
        assert 'model.backbone.compression is invalid: prune_rate must be ' \
            'in [0, 1), got 1.0' in message, name
        assert 'Traceback' not in message
    assert not out.exists()


def test_pruned_checkpoint_under_a_tome_config_names_both(world, tmp_path,
                                                          capsys):
    message = refused('test', [TOME_TINY, world['pruned'], '--work-dir',
                               tmp_path / 'w', '--cfg-options'] +
                      options(world['root']), capsys)
    assert 'holds Prune-and-Merge structures' in message
    assert "the config's model is ToMe (compression method='tome')" in \
        message


def test_export_refuses_opsets_it_cannot_write(world, tmp_path, capsys):
    message = refused('export_onnx', [DENSE_TINY, world['dense'], '--out',
                                      tmp_path / 'm.onnx', '--opset', 5],
                      capsys)
    assert '--opset 5' in message and 'writes opsets 18..' in message
    assert list(tmp_path.iterdir()) == []


def test_timm_converter_names_what_the_file_is(world, tmp_path, capsys):
    mmseg = refused('timm2mmseg_pm', [world['dense'], tmp_path / 'o.pth'],
                    capsys)
    assert 'already an mmseg / mmseg_pm checkpoint' in mmseg
    assert 'layer scale' not in mmseg
    jpeg = tmp_path / 'weights.pth'
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(jpeg, 'JPEG')
    message = refused('timm2mmseg_pm', [jpeg, tmp_path / 'o.pth'], capsys)
    assert 'is a JPEG image, not a readable PyTorch checkpoint' in message
    assert 'weights_only' not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ['weights.pth']


def test_demo_refuses_a_foreign_data_root_before_making_its_work_dir(
        tmp_path, capsys):
    (tmp_path / 'data').mkdir()
    (tmp_path / 'data' / 'notes.txt').write_text('mine')
    message = refused('demo', ['--data-root', tmp_path / 'data',
                               '--work-dir', tmp_path / 'work'], capsys)
    assert 'holds other files than the demo' in message
    assert '--overwrite' not in message
    assert not (tmp_path / 'work').exists()
    assert (tmp_path / 'data' / 'notes.txt').read_text() == 'mine'


def test_prune_and_visualize_name_the_configs_they_take(world, tmp_path,
                                                       capsys):
    message = refused('prune', [TOME_TINY, world['dense'], '--out',
                                tmp_path / 'p.pth', '--cfg-options'] +
                      options(world['root']), capsys)
    assert "method='tome'" in message and 'tools/test.py' in message
    message = refused('visualize_tokens', [
        DENSE_TINY, world['dense'], world['image'], '--out',
        tmp_path / 'v.png'], capsys)
    assert 'pass a compressed config' in message
    message = refused('demo', ['--layers', '9', '--data-root',
                               world['root'], '--work-dir', tmp_path / 'w'],
                      capsys)
    assert 'outside blocks 0..3' in message
    assert list(tmp_path.iterdir()) == []


def test_cfg_options_keep_spaces_and_refuse_malformed_entries(capsys):
    parser = tool('test').build_parser()
    args = parser.parse_args(['c.py', 'k.pth', '--cfg-options',
                              'test_dataloader.dataset.data_root=data/my set',
                              'a.b=[1, 2]', 'c=3'])
    assert args.cfg_options == {
        'test_dataloader.dataset.data_root': 'data/my set', 'a.b': [1, 2],
        'c': 3}
    for entry, message in (('x.y', 'expected KEY=VALUE'),
                           ('x=[my set, b]', 'removes the spaces'),
                           ('x=[1,2', 'unbalanced brackets')):
        with pytest.raises(SystemExit):
            parser.parse_args(['c.py', 'k.pth', '--cfg-options', entry])
        assert message in capsys.readouterr().err


def test_a_data_root_with_a_space_evaluates(world, tmp_path):
    metrics = tool('test').main([
        str(DENSE_TINY), str(world['dense']), '--work-dir',
        str(tmp_path / 'w'), '--cfg-options'] + options(world['root']))
    assert 'mIoU' in metrics
