"""Argument parsing shared by the mmseg-style command lines in ``tools/``:
argument types that refuse bad values at parsing, the runner arguments,
and :func:`run_cli`, which turns a :class:`UsageError` into argparse's
one-line usage error. Everything a tool does after parsing is a call into
:mod:`mmseg_pm.apis`."""
import argparse
import dataclasses
import os
import re
import signal
import sys
import threading
import warnings
from contextlib import contextmanager

import torch
from mmengine.config import DictAction

from mmseg_pm.apis import end_distributed
from mmseg_pm.utils.errors import UsageError
from mmseg_pm.utils.outputs import DISK_FULL, OutputWriteError


# ---------------------------------------------------------------- arguments
def _number(text: str, convert, kind: str):
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'expected {kind}, got {text!r}') from None


def int_at_least(minimum: int):
    """argparse ``type``: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        value = _number(text, int, 'an integer')
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f'must be >= {minimum}, got {value}')
        return value
    parse.__name__ = f'integer >= {minimum}'
    return parse


def float_in(low: float, high: float = float('inf'),
             low_open: bool = False, high_open: bool = False):
    """argparse ``type``: a float in the interval from ``low`` to
    ``high`` (open at the ends marked so)."""
    interval = f'{"(" if low_open else "["}{low:g}, {high:g}' \
        f'{")" if high_open or high == float("inf") else "]"}'

    def parse(text: str) -> float:
        value = _number(text, float, 'a number')
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (above and below):  # also refuses nan
            raise argparse.ArgumentTypeError(
                f'must be in {interval}, got {text}')
        return value
    parse.__name__ = f'number in {interval}'
    return parse


class CfgOptionsAction(DictAction):
    """mmengine's ``DictAction`` for ``--cfg-options KEY=VALUE ...``, but a
    value with spaces (a path like ``data/my set``) is kept as written
    instead of losing its spaces, and a malformed entry is a usage error
    instead of a traceback."""

    def __call__(self, parser, namespace, values, option_string=None):
        options = dict(getattr(namespace, self.dest, None) or {})
        for item in values or []:
            key, sep, value = item.partition('=')
            if not sep or not key.strip():
                parser.error(f'{option_string} {item!r}: expected KEY=VALUE '
                             '(e.g. train_cfg.max_iters=100)')
            plain = not any(c in value for c in '[](),')
            if plain and any(c.isspace() for c in value.strip()):
                options[key] = value.strip().strip('\'"')  # text as given
                continue
            inside = re.sub(r'\s*([\[\](),])\s*', r'\1', value.strip())
            if any(c.isspace() for c in inside):  # not just '[1, 2]'
                parser.error(
                    f'{option_string} {item!r}: mmengine removes the spaces '
                    'inside list values; set this entry in the config file '
                    'instead (or rename the path without spaces)')
            if value.count('[') != value.count(']') or \
                    value.count('(') != value.count(')'):
                parser.error(f'{option_string} {item!r}: unbalanced brackets;'
                             ' quote the whole entry for the shell, e.g. '
                             '\'key=[1, 2]\'')
            options[key] = self._parse_iterable(value)
        setattr(namespace, self.dest, options)


def add_runner_arguments(parser: argparse.ArgumentParser,
                         cfg_example: str) -> None:
    """--cfg-options, --launcher and the launcher's --local-rank."""
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=CfgOptionsAction,
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


# ---------------------------------------------------------------- settings
def defaults_of(settings_class) -> dict:
    """Field name -> default of a settings dataclass: the parser of a
    pipeline takes its defaults from there, so each has one place."""
    out = {}
    for field in dataclasses.fields(settings_class):
        if field.default is not dataclasses.MISSING:
            out[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            out[field.name] = field.default_factory()
    return out


def settings_from(settings_class, args: argparse.Namespace):
    """The settings dataclass built from the parsed arguments of the same
    names (the parser may hold more: process-wide ones); lists become
    tuples, as in the dataclasses."""
    values = {f.name: getattr(args, f.name)
              for f in dataclasses.fields(settings_class)}
    return settings_class(**{k: tuple(v) if isinstance(v, list) else v
                             for k, v in values.items()})


def set_process(threads=None, quiet: bool = True) -> None:
    """What a command sets for its whole process, never the library: torch's
    CPU threads (None: torch's default) and (``quiet``) silence for the
    UserWarnings mmseg and mmengine repeat at every model build."""
    if threads is not None:
        torch.set_num_threads(threads)
    if not quiet:
        return
    warnings.filterwarnings('ignore', category=UserWarning, module='mmseg')
    warnings.filterwarnings('ignore', category=UserWarning,
                            module='mmengine')


def set_local_rank(local_rank: int) -> None:
    """Expose the launcher's rank to mmengine unless torchrun already did."""
    os.environ.setdefault('LOCAL_RANK', str(local_rank))


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the tool is, as Ctrl-C would be."""


@contextmanager
def sigterm_as_interrupt():
    """Within the block SIGTERM (what ``kill``, ``timeout`` and job
    schedulers send) raises :class:`Terminated`, a KeyboardInterrupt, so it
    unwinds like Ctrl-C: every output being written removes its temporary
    file. Only the main thread can take signals; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise Terminated(f'signal {signum}')

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_interrupted(err: KeyboardInterrupt, prog: str) -> None:
    """One line and the shell's status for the signal: 143 after SIGTERM,
    130 after Ctrl-C."""
    terminated = isinstance(err, Terminated)
    what = 'terminated (SIGTERM)' if terminated else 'interrupted'
    print(f'{prog}: {what}; no partly written output is left',
          file=sys.stderr)
    sys.exit(143 if terminated else 130)


def run_tool(main) -> None:
    """What ``tools/*.py`` run: ``main()`` with SIGTERM unwinding like
    Ctrl-C (also in the tools that do not parse with :func:`run_cli`),
    either ending in one line."""
    try:
        with sigterm_as_interrupt():
            main()
    except KeyboardInterrupt as err:
        exit_interrupted(err, os.path.basename(sys.argv[0]))


def run_cli(parser: argparse.ArgumentParser, main, argv=None):
    """Parse ``argv`` and call ``main(args)``; bad input (a
    :class:`UsageError` from the library) exits with argparse's one-line
    usage error (status 2) instead of a traceback. SIGTERM unwinds like
    Ctrl-C; both, and a full disk, end with one line (status 143, 130, 1)
    after every output being written has removed its temporary file. A
    distributed run leaves its process group before the process exits."""
    args = parser.parse_args(argv)
    if hasattr(args, 'local_rank'):
        set_local_rank(args.local_rank)
    completed = False
    try:
        with sigterm_as_interrupt():
            result = main(args)
        completed = True
        return result
    except OutputWriteError as err:  # a full disk, whatever the writer
        parser.exit(1, f'{parser.prog}: error: {err}\n')
    except UsageError as err:
        parser.error(str(err))
    except KeyboardInterrupt as err:
        exit_interrupted(err, parser.prog)
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        where = f' writing {err.filename}' if err.filename else ''
        parser.exit(1, f'{parser.prog}: error: {err.strerror or err}{where}; '
                    'no partly written output is left: free space or '
                    'choose another location\n')
    finally:
        end_distributed(completed)


def converter_parser(description: str, src_help: str,
                     key_help: str) -> argparse.ArgumentParser:
    """The arguments the checkpoint converters share: src, dst, --key,
    --drop-dist-token and --force."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('src', help=src_help)
    parser.add_argument('dst', help='converted checkpoint to write')
    parser.add_argument('--key', help='entry of the checkpoint that holds the '
                        f'weights (default: {key_help})')
    parser.add_argument('--drop-dist-token', action='store_true',
                        help='drop a DeiT distillation token and its position '
                        'embedding instead of refusing the checkpoint')
    parser.add_argument('--force', action='store_true',
                        help='overwrite an existing dst')
    return parser


def print_conversion(converted: dict, notes, dst) -> None:
    """A converter's notes and what it wrote."""
    for note in notes:
        print(f'note: {note}')
    print(f'wrote {len(converted)} tensors to {dst}')
