"""tools/prune.py end to end: a dense checkpoint trained by tools/train.py is
scored, pruned and saved; tools/test.py evaluates the output with no extra
flags, and tools/train.py fine-tunes it with distillation."""
import pytest
import torch

import mmseg_pm.models  # noqa: F401
from mmseg_pm.apis.config import build_runner
from mmseg_pm.apis import evaluation_config
from mmseg_pm.models.checkpoint import load_checkpoint_into
from mmseg_pm.compression import (DEFAULT_PLACEMENT, PMConfig,
                                  search_structures)
from tests.helpers import CONFIGS, DENSE_TINY, PM_TINY
from tests.helpers import cli_module as tool
from tests.helpers import data_options

pytestmark = pytest.mark.slow  # every test trains a dense model first

DISTILL = CONFIGS / 'distill/distill-pm-segmenter_vit-tiny_mask_synthetic-ade-64x64.py'  # noqa: E501


def load(path):
    from mmengine.runner.checkpoint import get_torch_safe_globals
    with torch.serialization.safe_globals(get_torch_safe_globals()):
        return torch.load(path, map_location='cpu', weights_only=True)


@pytest.fixture(scope='module')
def dense(tmp_path_factory, synthetic_ade):
    """A tiny synthetic data set and a dense checkpoint after 2 iterations
    of tools/train.py (a real mmengine Runner checkpoint)."""
    tmp = tmp_path_factory.mktemp('prune_tool')
    data = synthetic_ade
    tool('train').main([
        str(DENSE_TINY), '--work-dir', str(tmp / 'dense'), '--cfg-options',
        *data_options(data), 'train_cfg.max_iters=2', 'val_cfg=None',
        'val_dataloader=None', 'val_evaluator=None',
        'default_hooks.checkpoint.interval=2', 'param_scheduler.0.end=2'
    ])
    return tmp, data, tmp / 'dense' / 'iter_2.pth'


def test_prune_then_test_then_distill(dense, capsys):
    tmp, data, checkpoint = dense
    out = tmp / 'pruned.pth'
    summary = tool('prune').main([
        str(PM_TINY), str(checkpoint), '--out', str(out), '--iters', '2',
        '--keep-rate', '0.4', '--prune-rate', '0.1', '--device', 'cpu',
        '--cfg-options', *data_options(data)
    ])
    printed = capsys.readouterr().out
    assert 'GFLOPs per 64x64 crop' in printed and 'centres' in printed

    saved = load(out)  # plain tensors and data: weights_only loads it
    meta = saved['meta']['prune_and_merge']
    state = saved['state_dict']
    assert meta['compression']['keep_rate'] == 0.4
    assert meta['ranking'] == 'global'
    # the structures in the weights are the search result of the saved scores
    config = PMConfig.from_dict(
        dict(mode='layer', layers=[1, 2, 3], keep_rate=0.4, prune_rate=0.1),
        4)
    assert meta['placement'] == DEFAULT_PLACEMENT == 'random'
    assert meta['compression']['reconstruct'] == 'residual'
    assert meta['compression']['assign'] == 'content'
    expected = search_structures(meta['scores'], config, (8, 8), 'global',
                                 'random', meta['seed'])
    for first, s in zip((1, 2, 3), expected):
        prefix = f'backbone.token_compressors.{first}.'
        assert torch.equal(state[prefix + 'group'], s.group)
        assert bool(state[prefix + 'residual'])
        # content-aware windows (the default) change per image, so every
        # kept token enters its window's plain mean with weight 1
        assert torch.equal(state[prefix + 'merge_weight'],
                           (s.group >= 0).float())
        assert torch.equal(state[prefix + 'reconstruct_weight'],
                           (s.group >= 0).float())
    # global ranking: the totals are exact, the layers differ
    assert sum(s.num_groups for s in expected) == int(0.4 * 64) * 3
    assert sum(s.num_pruned for s in expected) == int(0.1 * 64) * 3
    assert [r['tokens'] for r in meta['layers']][0] == 65
    assert meta['flops_compressed'] < meta['flops_dense']
    assert summary['flops_dense'] == meta['flops_dense']
    # the dense weights are carried over unchanged
    dense_state = load(checkpoint)['state_dict']
    for key, value in dense_state.items():
        assert torch.equal(state[key], value), key

    # tools/test.py evaluates it with no other flags (but the data root)
    test = tool('test')
    args = test.build_parser().parse_args(
        [str(PM_TINY), str(out), '--work-dir', str(tmp / 'test'),
         '--cfg-options', *data_options(data)])
    runner = build_runner(evaluation_config(args.config, args.checkpoint,
                                      args.work_dir, args.cfg_options))
    metrics = runner.test()
    assert 0 <= metrics['mIoU'] <= 100
    installed = runner.model.backbone.structures()
    assert [s.num_groups for s in installed] == \
        [s.num_groups for s in expected]
    # the config's own keep_rate is not what runs, and loading says so
    capsys.readouterr()
    load_checkpoint_into(runner.model, str(out))
    assert (f'{out} holds structures searched with keep_rate=0.4, '
            "prune_rate=0.1; they run in place of the config's "
            'keep_rate=0.5, prune_rate=0.0') in ''.join(capsys.readouterr())

    # a few iterations of distillation fine-tuning from it
    tool('train').main([
        str(DISTILL), '--work-dir', str(tmp / 'distill'), '--cfg-options',
        *data_options(data), f'load_from={out}',
        f'model.teacher_checkpoint={checkpoint}', 'train_cfg.max_iters=2',
        'val_cfg=None', 'val_dataloader=None', 'val_evaluator=None',
        'default_hooks.checkpoint.interval=2', 'param_scheduler.0.end=2'
    ])
    tuned = load(tmp / 'distill' / 'iter_2.pth')['state_dict']
    assert not any('teacher' in k for k in tuned)
    assert set(tuned) == set(state)
    for first in (1, 2, 3):  # the support is fixed, the weights learn
        prefix = f'backbone.token_compressors.{first}.'
        assert torch.equal(tuned[prefix + 'group'], state[prefix + 'group'])
    assert not torch.equal(tuned['backbone.token_compressors.1.merge_weight'],
                           state['backbone.token_compressors.1.merge_weight'])


def run_prune_expecting_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tool('prune').main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_bad_command_lines_fail_before_any_work(dense, capsys):
    tmp, _, checkpoint = dense
    out = tmp / 'never.pth'
    base = [str(PM_TINY), str(checkpoint), '--out', str(out)]
    err = run_prune_expecting_error(base + ['--keep-rate', '1.5'], capsys)
    assert 'argument --keep-rate: must be in (0, 1], got 1.5' in err
    err = run_prune_expecting_error(
        base + ['--keep-rate', '0.7', '--prune-rate', '0.4'], capsys)
    assert 'keep_rate + prune_rate' in err
    err = run_prune_expecting_error(base + ['--ranking', 'span'], capsys)
    assert "argument --ranking: invalid choice: 'span'" in err
    err = run_prune_expecting_error(
        [str(PM_TINY), str(checkpoint), '--out', str(checkpoint)], capsys)
    assert 'is the input checkpoint' in err
    err = run_prune_expecting_error(
        [str(DENSE_TINY), str(checkpoint), '--out', str(out)], capsys)
    assert 'not a Prune-and-Merge config' in err
    assert not out.exists()
    out.write_bytes(b'keep me')
    err = run_prune_expecting_error(base, capsys)
    assert 'exists; pass --force' in err
    assert out.read_bytes() == b'keep me'


def test_span_mode_scores_each_span_once(dense, tmp_path, capsys):
    tmp, data, checkpoint = dense
    span_config = tmp_path / 'span.py'
    span_config.write_text(
        f'_base_ = [{str(PM_TINY)!r}]\n'
        'model = dict(backbone=dict(compression=dict(\n'
        "    _delete_=True, mode='span', spans=[(1, 3)], keep_rate=0.25)))\n")
    out = tmp_path / 'span.pth'
    summary = tool('prune').main([
        str(span_config), str(checkpoint), '--out', str(out), '--iters', '1',
        '--cfg-options', *data_options(data)
    ])
    assert summary['compression']['mode'] == 'span'
    assert summary['ranking'] == 'layer'  # each span ranks alone
    rows = summary['layers']
    # one structure shared by blocks 1..3: exactly int(0.25 * 64) centres
    assert [r['unit'] for r in rows] == [None, [1, 3], [1, 3], [1, 3]]
    assert [r['tokens'] for r in rows] == [65, 17, 17, 17]
    state = load(out)['state_dict']
    assert int(state['backbone.token_compressors.1.is_centre'].sum()) == 16
    assert not any('token_compressors.2' in k for k in state)
