"""Distributed training, evaluation and token scoring on CPU.

Two gloo processes started by torchrun (``--standalone`` picks a free port)
or as srun starts them, running the real tools: mmengine's Runner with
MMDistributedDataParallel, mmseg's ADE20K dataset and IoUMetric, and
tools/prune.py's sharded scoring. Only these: ``pytest -m distributed``.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import mmseg_pm.models  # noqa: F401
from mmseg_pm.apis import evaluation_config
from mmseg_pm.apis.config import build_runner
from mmseg_pm.apis.distributed import (RankBatchSampler,
                                       export_slurm_environment)
from mmseg_pm.utils.checkpoint import load_checkpoint_file
from mmseg_pm.utils.errors import UsageError
from tests.helpers import PM_TINY, ROOT, cli_module as load_tool
from tests.helpers import data_options

pytestmark = pytest.mark.distributed

TORCH_ENV = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')
SLURM_ENV = ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST',
             'SLURM_LOCALID')


def tool_env() -> dict:
    """This checkout's mmseg_pm first, and tests/ for the rank-weights
    hook; no launcher variables inherited from the caller."""
    env = {k: v for k, v in os.environ.items()
           if k not in TORCH_ENV + SLURM_ENV}
    env['PYTHONPATH'] = os.pathsep.join(
        [str(ROOT), str(Path(__file__).parent),
         env.get('PYTHONPATH', '')])
    return env


def run_together(commands, envs, cwd: Path, timeout=300) -> str:
    """Start the commands at once, wait for all; stop the others when one
    fails (a lone rank would wait for its peers). Returns all output."""
    logs = [cwd / f'launch_{time.monotonic_ns()}_{i}.log'
            for i in range(len(commands))]
    procs = []
    for command, env, log in zip(commands, envs, logs):
        with open(log, 'w') as out:
            procs.append(subprocess.Popen(
                list(map(str, command)), cwd=cwd, env=env,
                stdout=out, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            if any(p.returncode for p in procs) or \
                    time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    output = '\n'.join(log.read_text() for log in logs)
    assert all(p.returncode == 0 for p in procs), output[-4000:]
    return output


def torchrun(tool, *args, cwd):
    """``torchrun --standalone --nproc-per-node 2 tools/TOOL.py ARGS``."""
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone',
               '--nproc-per-node', '2', ROOT / 'tools' / f'{tool}.py', *args]
    return run_together([command], [tool_env()], cwd)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def srun(tool, *args, cwd):
    """Two processes with the variables srun gives the tasks of one node."""
    port = str(free_port())
    envs = [dict(tool_env(), SLURM_PROCID=str(rank), SLURM_NTASKS='2',
                 SLURM_LOCALID=str(rank), SLURM_NODELIST='localhost',
                 MASTER_ADDR='127.0.0.1', MASTER_PORT=port,
                 OMP_NUM_THREADS='1')  # one core each, as torchrun does
            for rank in range(2)]
    command = [sys.executable, ROOT / 'tools' / f'{tool}.py', *args]
    return run_together([command, command], envs, cwd)


@pytest.fixture(scope='module')
def trained(tmp_path_factory, synthetic_ade):
    """A 2-iteration training of the tiny Prune-and-Merge config on 2 CPU
    processes (torchrun), each rank saving its weights before and after."""
    tmp = tmp_path_factory.mktemp('distributed')
    data = synthetic_ade
    config = tmp / 'pm_rank_weights.py'
    config.write_text(
        f"_base_ = ['{PM_TINY}']\n"
        "custom_imports = dict(imports=['mmseg_pm.models', "
        "'rank_weights_hook'], allow_failed_imports=False)\n"
        "custom_hooks = [dict(type='SaveRankWeightsHook')]\n")
    work = tmp / 'train'
    log = torchrun(
        'train', config, '--work-dir', work, '--launcher', 'pytorch',
        '--cfg-options', *data_options(data), 'train_cfg.max_iters=2',
        'val_cfg=None', 'val_dataloader=None', 'val_evaluator=None',
        'default_hooks.checkpoint.interval=2', 'param_scheduler.0.end=2',
        cwd=tmp)
    return tmp, data, work, log


@pytest.mark.slow  # 2-process training
def test_two_ranks_train_to_identical_weights(trained):
    _, _, work, log = trained
    assert log.count('no accelerator: --launcher pytorch runs 2 CPU '
                     'processes on a gloo process group') == 1
    assert 'Iter(train) [2/2]' in log
    weights = {(stage, rank): torch.load(
        work / 'rank_weights' / f'{stage}_rank{rank}.pth', weights_only=True)
        for stage in ('before', 'after') for rank in (0, 1)}
    after = weights['after', 0]
    assert after.keys() == weights['after', 1].keys()
    for key, value in after.items():
        assert torch.equal(value, weights['after', 1][key]), key
    trained_keys = [k for k, v in after.items()
                    if not torch.equal(v, weights['before', 0][k])]
    assert any('backbone.layers' in k for k in trained_keys)
    saved = load_checkpoint_file(work / 'iter_2.pth')['state_dict']
    for key, value in after.items():
        assert torch.equal(value, saved[key]), key


@pytest.fixture(scope='module')
def single_process_metrics(trained):
    """tools/test.py on the trained checkpoint in this process, without a
    launcher."""
    tmp, data, work, _ = trained
    test = load_tool('test')
    args = test.build_parser().parse_args([
        str(PM_TINY), str(work / 'iter_2.pth'), '--work-dir',
        str(tmp / 'test_single'), '--cfg-options', *data_options(data)])
    return build_runner(evaluation_config(args.config, args.checkpoint,
                                    args.work_dir, args.cfg_options)).test()


def logged_metrics(work: Path) -> dict:
    (path, ) = work.glob('*/*.json')
    return json.loads(path.read_text())


@pytest.mark.slow  # 2-process training
@pytest.mark.parametrize('launcher', ['pytorch', 'slurm'])
def test_distributed_evaluation_equals_one_process(trained, launcher,
                                                   single_process_metrics):
    """3 validation images on 2 ranks: mmengine pads the shards and
    collects the results; the metrics are those of one process."""
    tmp, data, work, _ = trained
    checkpoint = work / 'iter_2.pth'
    out = tmp / f'test_{launcher}'
    start = (torchrun if launcher == 'pytorch' else srun)
    log = start('test', PM_TINY, checkpoint, '--work-dir', out, '--launcher',
                launcher, '--cfg-options', *data_options(data), cwd=tmp)
    assert log.count('mIoU:') == 1  # printed by rank 0 only
    distributed = logged_metrics(out)
    for key in ('aAcc', 'mIoU', 'mAcc'):
        assert distributed[key] == single_process_metrics[key], key


@pytest.mark.slow  # 2-process training
def test_distributed_scores_equal_one_process_scores(trained, capsys):
    """2 ranks x 2 batches each = 1 process x 4 batches, to 1e-6; rank 0
    alone writes the pruned checkpoint."""
    tmp, data, work, _ = trained
    args = [PM_TINY, work / 'iter_2.pth', '--iters', '4', '--cfg-options',
            *data_options(data)]
    start = time.perf_counter()
    load_tool('prune').main(
        list(map(str, args)) + ['--out', str(tmp / 'one.pth')])
    one_process_s = time.perf_counter() - start
    (tmp / 'two').mkdir()
    start = time.perf_counter()
    log = torchrun('prune', *args, '--out', tmp / 'two' / 'pruned.pth',
                   '--launcher', 'pytorch', cwd=tmp)
    two_process_s = time.perf_counter() - start
    assert log.count(f"wrote {tmp / 'two' / 'pruned.pth'}") == 1
    assert [p.name for p in (tmp / 'two').iterdir()] == ['pruned.pth']
    one = load_checkpoint_file(tmp / 'one.pth')
    two = load_checkpoint_file(tmp / 'two' / 'pruned.pth')
    a = one['meta']['prune_and_merge']['scores'].double()
    b = two['meta']['prune_and_merge']['scores'].double()
    relative = ((a - b).abs() / b.abs().clamp_min(1e-12)).max().item()
    with capsys.disabled():
        print(f'\nscoring 4 batches: 1 process {one_process_s:.1f} s '
              f'(in-process), 2 processes {two_process_s:.1f} s (torchrun, '
              f'with start-up); max relative score difference '
              f'{relative:.2e}')
    assert relative <= 1e-6
    # the same structures; float buffers derived from the scores agree to
    # float32 rounding
    for key, value in one['state_dict'].items():
        if value.is_floating_point():
            torch.testing.assert_close(value, two['state_dict'][key],
                                       rtol=1e-5, atol=1e-6, msg=key)
        else:
            assert torch.equal(value, two['state_dict'][key]), key


@pytest.mark.parametrize('world_size', [2, 3])
def test_rank_batches_together_are_the_one_process_batches(world_size):
    """7 batches of 2 from a 5-sample data set: the ranks' shares add up
    to the single process's batches, positions 0..13 in stream order."""
    one = list(RankBatchSampler(5, 2, 7, seed=1))
    shares = [RankBatchSampler(5, 2, 7, 1, rank, world_size)
              for rank in range(world_size)]
    batches = [list(share) for share in shares]
    assert [len(b) for b in batches] == [len(share) for share in shares]
    assert sorted(b for share in batches for b in share) == one
    assert [p for batch in one for p, _ in batch] == list(range(14))
    indices = [i for batch in one for _, i in batch]
    assert sorted(indices[:5]) == sorted(indices[5:10]) == list(range(5))


@pytest.mark.parametrize('tool,launcher,missing,how', [
    ('train', 'pytorch', 'RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT are',
     'torchrun --nproc-per-node N'),
    ('test', 'slurm', 'SLURM_PROCID, SLURM_NTASKS, SLURM_NODELIST are',
     'srun --ntasks N'),
    ('prune', 'pytorch', 'RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT are',
     'torchrun --nproc-per-node N'),
])
def test_a_launcher_without_its_environment_is_a_usage_error(
        tmp_path, monkeypatch, capsys, tool, launcher, missing, how):
    for name in TORCH_ENV + SLURM_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('LOCAL_RANK', '0')  # restored after the test
    checkpoint = tmp_path / 'weights.pth'
    checkpoint.touch()
    argv = {'train': [PM_TINY],
            'test': [PM_TINY, checkpoint],
            'prune': [PM_TINY, checkpoint, '--out',
                      tmp_path / 'out.pth']}[tool]
    with pytest.raises(SystemExit) as exit_info:
        load_tool(tool).main([*map(str, argv), '--launcher', launcher])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f'--launcher {launcher} needs the environment' in err
    assert missing in err and how in err
    assert not torch.distributed.is_initialized()


def test_slurm_without_scontrol_asks_for_master_addr(tmp_path, monkeypatch):
    for name in TORCH_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('SLURM_PROCID', '0')
    monkeypatch.setenv('SLURM_NTASKS', '2')
    monkeypatch.setenv('SLURM_NODELIST', 'node[1-2]')
    monkeypatch.setenv('PATH', str(tmp_path))  # no scontrol here
    with pytest.raises(UsageError, match='set MASTER_ADDR'):
        export_slurm_environment()
    assert 'RANK' not in os.environ


@pytest.mark.parametrize('fails', [False, True])
def test_a_tool_leaves_its_process_group_before_exiting(monkeypatch, fails):
    """A gloo group alive at interpreter exit could abort a finished rank
    (exit -6, 'terminate called without an active exception'); run_cli
    ends the group whether the tool completes or refuses its input."""
    from mmseg_pm.apis import init_distributed
    from mmseg_pm.cli import add_launcher_arguments, run_cli

    for name, value in dict(RANK='0', WORLD_SIZE='1', LOCAL_RANK='0',
                            MASTER_ADDR='127.0.0.1',
                            MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(name, value)
    seen = {}

    def tool(args):
        seen['rank, world size'] = init_distributed(args.launcher)
        seen['initialized'] = torch.distributed.is_initialized()
        if fails:
            raise UsageError('refused')
        return 'done'

    parser = argparse.ArgumentParser()
    add_launcher_arguments(parser)
    if fails:
        with pytest.raises(SystemExit):
            run_cli(parser, tool, ['--launcher', 'pytorch'])
    else:
        assert run_cli(parser, tool, ['--launcher', 'pytorch']) == 'done'
    assert seen == {'rank, world size': (0, 1), 'initialized': True}
    assert not torch.distributed.is_initialized()
