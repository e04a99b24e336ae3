"""Pieces shared by the mmseg-style command lines in ``tools/``."""
import argparse
import os
from pathlib import Path

from mmengine.config import Config, DictAction
from mmengine.runner import Runner
from mmseg.registry import RUNNERS

# Devices mmengine's AmpOptimWrapper and init_dist work with.
ACCELERATORS = ('cuda', 'npu', 'mlu', 'musa')


class UsageError(ValueError):
    """A bad command line: reported as a usage error, not a traceback."""


def add_runner_arguments(parser: argparse.ArgumentParser,
                         cfg_example: str) -> None:
    """--cfg-options, --launcher and the launcher's --local-rank."""
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help=f'override config entries, e.g. {cfg_example} or key="[a,b]"')
    add_launcher_arguments(parser)


def add_launcher_arguments(parser: argparse.ArgumentParser) -> None:
    """--launcher and the launcher's --local-rank."""
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher: pytorch under torchrun, slurm under srun (GPUs: '
        'nccl; CPU-only machines: gloo)')
    # torch.distributed launchers pass --local-rank (>=2.0) or --local_rank.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def set_local_rank(local_rank: int) -> None:
    """Expose the launcher's rank to mmengine unless torchrun already did."""
    os.environ.setdefault('LOCAL_RANK', str(local_rank))


def load_config(path: str, cfg_options, launcher: str = 'none') -> Config:
    """Read the config and apply command-line overrides."""
    if not Path(path).is_file():
        raise UsageError(f'config file not found: {path}')
    cfg = Config.fromfile(path)
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def write_config(cfg: Config, path) -> Path:
    """``cfg`` dumped to ``path`` (a self-contained .py config), written to
    a temporary sibling first and then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.stem}.tmp.py')
    cfg.dump(str(tmp))
    tmp.replace(path)
    return path


def resolve_work_dir(cfg: Config, cli_work_dir, config_path: str) -> None:
    """Work dir priority: CLI > config > ./work_dirs/<config stem>."""
    if cli_work_dir is not None:
        cfg.work_dir = cli_work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = str(Path('./work_dirs') / Path(config_path).stem)


def build_runner(cfg: Config) -> Runner:
    """Default Runner, or a registered one named by ``runner_type``."""
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def load_tool(name: str):
    """``tools/<name>.py`` of this repository as a module (tools/ is not a
    package), so the demo and the study call the same code as the CLI."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / 'tools' / f'{name}.py'
    spec = importlib.util.spec_from_file_location(f'mmseg_pm_tools_{name}',
                                                  path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
