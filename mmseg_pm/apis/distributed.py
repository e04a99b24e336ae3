"""Distributed runs: mmengine's launchers on accelerators, gloo on CPU.

On GPUs (npu, mlu, musa) the tools leave everything to mmengine, as mmseg's
do: ``init_dist`` binds each process to its device and starts nccl. On a
machine without accelerators ``init_dist`` cannot run (it calls
``torch.cuda.set_device``), so the tools start a gloo process group from the
launcher's environment themselves; the Runner then skips ``init_dist`` and
wraps the CPU model in ``MMDistributedDataParallel(device_ids=None)``.

Token scoring is not a Runner loop; it shards whole batches over the ranks
(:class:`RankBatchSampler`), seeds each sample's augmentation by its place in
the data stream (:class:`PositionSeededDataset`) and sums the per-token
totals over the ranks (:func:`sum_across_ranks`), so N ranks give the scores
of one process over the same batches.
"""
from __future__ import annotations

import copy
import datetime
import itertools
import os
import random
import subprocess
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch
from mmengine.config import Config
from mmengine.device import get_device
from mmengine.dist import all_reduce, get_dist_info, init_dist, is_distributed
from mmengine.logging import print_log
from torch.utils.data import DataLoader, Dataset, Sampler

from mmseg_pm.utils.errors import UsageError

# Devices mmengine's AmpOptimWrapper and init_dist work with.
ACCELERATORS = ('cuda', 'npu', 'mlu', 'musa')

# The variables each launcher sets, and how a user starts one.
LAUNCHER_ENVIRONMENT = {
    'pytorch': (('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'),
                'torchrun --nproc-per-node N TOOL ... --launcher pytorch'),
    'slurm': (('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST'),
              'srun --ntasks N python TOOL ... --launcher slurm'),
    'mpi': (('OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_SIZE',
             'OMPI_COMM_WORLD_LOCAL_RANK', 'MASTER_ADDR'),
            'mpirun -np N -x MASTER_ADDR=HOST python TOOL ... --launcher mpi'),
}


def check_launcher_environment(launcher: str) -> None:
    """Fail with the fix when the launcher's variables are missing (e.g.
    ``--launcher pytorch`` started with python instead of torchrun)."""
    if launcher == 'none':
        return
    if launcher not in LAUNCHER_ENVIRONMENT:
        raise UsageError(f'unknown launcher {launcher!r}; choose one of '
                         f'none, {", ".join(LAUNCHER_ENVIRONMENT)}')
    needed, command = LAUNCHER_ENVIRONMENT[launcher]
    missing = [name for name in needed if name not in os.environ]
    if missing:
        raise UsageError(
            f'--launcher {launcher} needs the environment its launcher sets, '
            f'but {", ".join(missing)} {"is" if len(missing) == 1 else "are"}'
            f' not set. Start the tool as `{command}`, or drop --launcher '
            'to run a single process.')


def has_accelerator() -> bool:
    """Whether mmengine would put models on an accelerator."""
    return get_device() in ACCELERATORS


def _first_slurm_host(nodelist: str) -> str:
    """The job's first host, the rendezvous point of every rank."""
    try:
        hosts = subprocess.run(['scontrol', 'show', 'hostnames', nodelist],
                               capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError) as err:
        raise UsageError(
            f'--launcher slurm: `scontrol show hostnames {nodelist}` failed '
            f'({err}); set MASTER_ADDR to the first host of the job') from err
    if not hosts:
        raise UsageError(f'--launcher slurm: no host in SLURM_NODELIST='
                         f'{nodelist}; set MASTER_ADDR')
    return hosts[0]


def export_slurm_environment() -> None:
    """torch.distributed's variables from slurm's, the way mmengine's slurm
    set-up derives them (MASTER_ADDR and MASTER_PORT win when set)."""
    address = os.environ.get('MASTER_ADDR') or _first_slurm_host(
        os.environ['SLURM_NODELIST'])
    os.environ.update(
        RANK=os.environ['SLURM_PROCID'],
        WORLD_SIZE=os.environ['SLURM_NTASKS'],
        LOCAL_RANK=os.environ.get('SLURM_LOCALID', '0'),
        MASTER_ADDR=address,
        MASTER_PORT=os.environ.get('MASTER_PORT', '29500'))


def init_cpu_process_group(launcher: str,
                           timeout: Optional[float] = None) -> None:
    """A gloo process group from the launcher's environment (env://)."""
    if launcher == 'slurm':
        export_slurm_environment()
    elif launcher != 'pytorch':
        raise UsageError(
            f'--launcher {launcher} needs accelerators here; on CPU start '
            'the tool with torchrun (--launcher pytorch) or srun '
            '(--launcher slurm)')
    kwargs = {}
    if timeout is not None:
        kwargs['timeout'] = datetime.timedelta(seconds=timeout)
    torch.distributed.init_process_group('gloo', **kwargs)


def _is_ddp_wrapper(wrapper_cfg: dict) -> bool:
    from mmengine.registry import MODEL_WRAPPERS
    from torch.nn.parallel import DistributedDataParallel

    kind = wrapper_cfg.get('type', 'MMDistributedDataParallel')
    if isinstance(kind, str):
        kind = MODEL_WRAPPERS.get(kind)
    return isinstance(kind, type) and issubclass(kind, DistributedDataParallel)


def setup_runner_launcher(cfg: Config) -> None:
    """Prepare ``cfg.launcher`` for mmengine's Runner.

    Checks the launcher's environment. With accelerators that is all: the
    Runner starts nccl as in mmseg. Without, it starts gloo here (the
    Runner then skips ``init_dist``), makes the Runner wrap the CPU model in
    ``MMDistributedDataParallel(device_ids=None)`` and logs that it did.
    """
    launcher = cfg.get('launcher', 'none')
    check_launcher_environment(launcher)
    if launcher == 'none' or has_accelerator():
        return
    if not is_distributed():
        dist_cfg = cfg.get('env_cfg', {}).get('dist_cfg', {})
        init_cpu_process_group(launcher, dist_cfg.get('timeout'))
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel',
        broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    if _is_ddp_wrapper(wrapper):
        wrapper['device_ids'] = None  # a CPU module: no device to bind
    cfg.model_wrapper_cfg = wrapper
    rank, world_size = get_dist_info()
    if rank == 0:
        print_log(
            f'no accelerator: --launcher {launcher} runs {world_size} CPU '
            'processes on a gloo process group started by mmseg_pm; model '
            f'wrapper {wrapper}', logger='current')


def init_distributed(launcher: str) -> Tuple[int, int]:
    """Start the process group for a tool without a Runner; returns
    ``(rank, world_size)``. nccl through mmengine on accelerators (each
    process bound to its device), gloo on CPU."""
    check_launcher_environment(launcher)
    if launcher != 'none' and not is_distributed():
        if has_accelerator():
            init_dist(launcher)
        else:
            init_cpu_process_group(launcher)
    return get_dist_info()


def end_distributed(completed: bool = True) -> None:
    """Leave the process group, if one was started: after a barrier when
    the work completed, so no rank exits while a peer still talks to it.
    A gloo group left alive at interpreter exit can abort the process
    ("terminate called without an active exception", exit -6) after the
    work has succeeded."""
    if not (torch.distributed.is_available()
            and torch.distributed.is_initialized()):
        return
    if completed:
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def sum_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise float64 sum over all ranks (a float64 copy of the
    tensor in a single process)."""
    total = tensor.detach().to(torch.float64).clone()
    if is_distributed():
        all_reduce(total, op='sum')
    return total


class RankBatchSampler(Sampler):
    """This rank's batches of one seeded, shuffled stream of a data set's
    indices: of ``num_batches`` batches of ``batch_size``, rank r takes
    batches r, r + world_size, ... So N ranks see together exactly the
    batches one process sees, whatever N. Yields lists of
    ``(position in the stream, index)`` for :class:`PositionSeededDataset`.
    """

    def __init__(self, size: int, batch_size: int, num_batches: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        if size < 1 or batch_size < 1 or num_batches < 1:
            raise ValueError(
                f'need a non-empty data set, batch size and batch count, got '
                f'size={size}, batch_size={batch_size}, '
                f'num_batches={num_batches}')
        self.size = size
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.seed = seed
        self.rank = rank
        self.world_size = world_size

    def indices(self) -> Iterator[int]:
        """Epoch after epoch of a seeded permutation (as mmengine's
        ``InfiniteSampler`` orders one process's data)."""
        generator = torch.Generator()
        generator.manual_seed(self.seed)
        while True:
            yield from torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        stream = enumerate(self.indices())
        for batch in range(self.num_batches):
            items = list(itertools.islice(stream, self.batch_size))
            if batch % self.world_size == self.rank:
                yield items

    def __len__(self) -> int:
        return len(range(self.rank, self.num_batches, self.world_size))


class PositionSeededDataset(Dataset):
    """Loads ``(position, index)`` items with python's, numpy's and torch's
    global generators seeded from ``(seed, position)``: a sample's random
    augmentation depends on its place in the stream only, not on which
    process or worker loads it, nor on what that process loaded before."""

    def __init__(self, dataset, seed: int = 0):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: Tuple[int, int]):
        position, index = item
        seed = (self.seed * 1_000_003 + position) % 2**32
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        return self.dataset[index]


def build_rank_dataloader(dataloader_cfg: dict, num_batches: int,
                          seed: int = 0) -> DataLoader:
    """This rank's share of ``num_batches`` batches of a dataloader config
    (its data set, batch size, workers and collate function; its sampler is
    replaced by :class:`RankBatchSampler`). Needs the config's default
    scope (``init_default_scope``)."""
    from mmengine.registry import DATASETS
    from mmengine.runner import Runner

    cfg = copy.deepcopy(dict(dataloader_cfg))
    dataset = cfg.pop('dataset')
    if isinstance(dataset, dict):
        dataset = DATASETS.build(dataset)
        if hasattr(dataset, 'full_init'):
            dataset.full_init()
    rank, world_size = get_dist_info()
    batches = RankBatchSampler(len(dataset), cfg.pop('batch_size', 1),
                               num_batches, seed, rank, world_size)
    for key in ('sampler', 'batch_sampler', 'shuffle', 'drop_last'):
        cfg.pop(key, None)
    cfg.update(dataset=PositionSeededDataset(dataset, seed), sampler=None,
               batch_sampler=batches)
    return Runner.build_dataloader(cfg, seed=seed)
