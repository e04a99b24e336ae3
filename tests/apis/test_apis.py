"""The library rules every tool goes through (mmseg_pm.apis): reading a
checkpoint into a model, configs and their options. Writing an output:
tests/utils/test_outputs.py."""
import pickle
import re

import pytest
import torch

import mmseg_pm.models  # noqa: F401
from mmseg_pm.apis.config import check_cfg_option, read_config
from mmseg_pm.compression.config import parse_compression
from mmseg_pm.models import PMVisionTransformer
from mmseg_pm.models.checkpoint import load_checkpoint_into
from mmseg_pm.utils.checkpoint import CheckpointError, load_checkpoint_file
from mmseg_pm.utils.errors import UsageError

KW = dict(img_size=32, patch_size=8, embed_dims=16, num_layers=3,
          num_heads=2)


def pm(layers=(1, )):
    torch.manual_seed(0)
    return PMVisionTransformer(
        compression=dict(mode='layer', layers=list(layers), keep_rate=0.5),
        **KW)


class Unpicklable:
    pass


# -------------------------------------------------------------- checkpoints
@pytest.mark.parametrize('content,message', [
    (b'', 'is empty (0 bytes)'),
    (b'hello\n', 'is a text file, not a readable PyTorch checkpoint'),
    (b'\xff\xd8\xff\xe0JFIF', 'is a JPEG image, not a readable PyTorch'),
    ('truncated', 'is not a readable PyTorch checkpoint (truncated'),
    (pickle.dumps({'a': Unpicklable()}, protocol=2), 'weights-only '
     'loading refuses (unsupported global '
     f'{Unpicklable.__module__}.Unpicklable)'),
    ('list', 'holds a list, not a checkpoint dict'),
])
def test_unreadable_checkpoints_are_named(tmp_path, content, message):
    path = tmp_path / 'bad.pth'
    if content == 'truncated':
        torch.save({'w': torch.zeros(1000)}, path)
        path.write_bytes(path.read_bytes()[:500])
    elif content == 'list':
        torch.save([torch.zeros(1)], path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(message)) as info:
        load_checkpoint_file(path)
    assert str(path) in str(info.value)


def test_missing_folder_and_unreachable_url_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='not found: .*nope.pth'):
        load_checkpoint_file(tmp_path / 'nope.pth')
    (tmp_path / 'last_checkpoint').write_text('/somewhere/iter_4.pth')
    with pytest.raises(CheckpointError, match='is a folder.*names '
                       '/somewhere/iter_4.pth'):
        load_checkpoint_file(tmp_path)
    # port 9 (discard) on this machine: refused at once, no network needed
    with pytest.raises(CheckpointError, match=r'cannot download '
                       r'http://127\.0\.0\.1:9/x\.pth: URLError'):
        load_checkpoint_file('http://127.0.0.1:9/x.pth')


def test_loading_refuses_what_would_run_silently_wrong(tmp_path):
    model = pm()
    state = model.state_dict()
    bad = dict(state, **{'layers.0.ln1.weight': torch.full((16, ),
                                                           float('inf'))})
    with pytest.raises(CheckpointError, match=r'NaN or Inf values in 1 '
                       r"weights \(e.g. \['layers.0.ln1.weight'\]\)"):
        load_checkpoint_into(pm(), dict(state_dict=bad))
    with pytest.raises(CheckpointError, match='only 0 of the model'):
        load_checkpoint_into(pm(), {'a': torch.zeros(2)})
    # structures for other blocks: the backbone's rule, with the file named
    path = tmp_path / 'units.pth'
    torch.save(dict(state_dict=state), path)
    with pytest.raises(CheckpointError, match=rf"{path}: .*blocks \['1'\] "
                       r"but this model is configured with \['2'\]"):
        load_checkpoint_into(pm(layers=(2, )), path)
    # structures for a model without compression
    dense = PMVisionTransformer(**KW)
    meta = dict(prune_and_merge=dict(config='configs/pm.py'))
    with pytest.raises(CheckpointError, match=r'holds Prune-and-Merge '
                       r'structures.*made with \(configs/pm.py\)'):
        load_checkpoint_into(dense, dict(meta=meta, state_dict=state))
    load_checkpoint_into(dense, dict(state_dict=state), structures='ignore')


def test_all_weights_for_evaluation_most_for_fine_tuning(capsys):
    state = pm().state_dict()
    some_missing = {k: v for k, v in state.items() if 'layers.2.' not in k}
    with pytest.raises(CheckpointError, match='weights of the config.s '
                       r"model are not in the checkpoint \(e.g. \['layers.2"):
        load_checkpoint_into(pm(), dict(state_dict=some_missing))
    target = pm()
    torch.nn.init.constant_(target.layers[0].ln1.weight, 3.0)
    load_checkpoint_into(target, dict(state_dict=some_missing),
                         require='most')
    assert torch.equal(target.layers[0].ln1.weight,
                       state['layers.0.ln1.weight'])


def test_module_prefix_and_mmengine_layout_load():
    state = pm().state_dict()
    model = pm(layers=(1, ))
    load_checkpoint_into(model, {'state_dict': {f'module.{k}': v for k, v
                                                in state.items()}})
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


# ---------------------------------------------------- configs and arguments
def test_cfg_options_and_config_files(tmp_path):
    from mmengine.config import Config
    cfg = Config(dict(train_cfg=dict(max_iters=4, val_interval=2),
                      optim=dict(lr=0.1), flags=dict(amp=False),
                      steps=[dict(end=4)]))
    for key, value, message in (
            ('train_cfg.max_itrs', 3, 'did you mean train_cfg.max_iters'),
            ('trian_cfg.max_iters', 3, 'did you mean train_cfg'),
            ('train_cfg.max_iters', 2.5, 'expected an integer'),
            ('flags.amp', 1, 'expected True or False'),
            ('optim.lr', 'fast', 'expected a number'),
            ('steps.1.end', 2, 'is a list of 1 entries')):
        with pytest.raises(UsageError, match=message):
            check_cfg_option(cfg, key, value)
    for key, value in (('optim.lr', 1), ('optim.momentum', 0.9),
                       ('train_cfg.max_iters', None), ('steps.0.end', 8)):
        check_cfg_option(cfg, key, value)  # allowed
    (tmp_path / 'c.yaml').write_text('a: [\n')
    with pytest.raises(UsageError, match='cannot read config .*c.yaml'):
        read_config(str(tmp_path / 'c.yaml'))


@pytest.mark.parametrize('compression,message', [
    (dict(mode='layer', layers=[1], keep_rate='0.5'),
     "keep_rate must be a number, got '0.5'"),
    (dict(mode='layer', layers=[1], prune_rate=True),
     'prune_rate must be a number, got True'),
    (dict(mode='layer', layers=[1], trainable=1),
     'trainable must be True or False'),
    (dict(mode='layer', layers=1), 'layers must be a list'),
    (dict(mode='span', spans=[(0, 1, 2)]), r'\(first, last\) pairs'),
    (dict(mode='span', spans=[(0.5, 1)]), 'integer block indices'),
    (dict(method='mstm', prune_layers=[1], keep_rate='a'),
     'keep_rate must be a number'),
    (dict(method='tome', layers=[True], r=1), 'integer block indices'),
])
def test_compression_values_are_type_checked(compression, message):
    with pytest.raises(ValueError, match=message):
        parse_compression(compression, 4)
