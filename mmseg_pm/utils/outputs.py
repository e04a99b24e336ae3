"""The output rule of every tool that writes files.

Before any work: an output is never one of the inputs (config, checkpoint,
image, scores, data directory), never an existing file unless the user
passed ``--force`` (and never a read-only one), its name ends in a suffix
that fits what the tool writes (a checkpoint is no ``.py`` file, with
``--force`` or not: :data:`OUTPUT_SUFFIXES`), and its directory must be
writable. Writing: a temporary file next to the output, renamed over it
only when complete, so an error, Ctrl-C or SIGTERM (the tools turn it into
Ctrl-C) leaves neither a half-written file nor the temporary one (nor
directories made for it). A temporary file is named after the output, the
host and the writing process (``.NAME.HOST.PID.RANDOM.tmpSUFFIX``): one left
by a process killed outright (SIGKILL, power loss) is removed by the next
successful write of the same output on that host. Files get the user's
normal permissions (``0666 & ~umask``), not mkstemp's private 0600.

A new output (written without ``--force``: ``replace=False``) is created
exclusively: of two runs writing the same new file, the second to finish
is refused instead of replacing the first one's. A write that fails for
lack of space (torch's writer raises ``RuntimeError``, not ``OSError``)
is one :class:`OutputWriteError` naming the file and the fix.
"""
from __future__ import annotations

import errno
import os
import re
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, List, Mapping, Optional, Tuple, Union

from .errors import UsageError

PathLike = Union[str, os.PathLike]
# what an output is checked against: {'config': path, ...} or paths
Inputs = Union[Mapping[str, Optional[PathLike]], Iterable[PathLike], None]


class OutputError(UsageError):
    """An output path that would destroy an input or cannot be written."""


class OutputWriteError(OutputError, OSError):
    """Writing an output failed for lack of room (a full disk, a quota, a
    file-size limit): an ``OSError`` too, whatever the writer raised."""


# what a full disk, a quota or a file-size limit raise
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# torch.save reports a failed write as a RuntimeError of its zip writer
TORCH_WRITE_FAILED = ('PytorchStreamWriter failed', 'inline_container')


# What a tool writes -> the suffixes its file may have (the first one is
# suggested); pictures: every format matplotlib writes.
OUTPUT_SUFFIXES = {
    'checkpoint': ('.pth', '.pt', '.ckpt'),
    'onnx': ('.onnx', ),
    'json': ('.json', ),
    'markdown': ('.md', ),
    'picture': None,
}
KIND_WORDS = dict(checkpoint='a checkpoint (torch.save)',
                  onnx='an ONNX model', json='JSON', markdown='markdown',
                  picture='a picture')


def output_suffixes(kind: str) -> Tuple[str, ...]:
    """The suffixes a ``kind`` of output may have."""
    if kind not in OUTPUT_SUFFIXES:
        raise ValueError(f'unknown output kind {kind!r}; one of '
                         f'{sorted(OUTPUT_SUFFIXES)}')
    suffixes = OUTPUT_SUFFIXES[kind]
    if suffixes is None:
        from matplotlib.figure import Figure
        formats = Figure().canvas.get_supported_filetypes()
        suffixes = ('.png', ) + tuple(sorted(f'.{f}' for f in formats
                                             if f != 'png'))
    return suffixes


def check_output_suffix(path: PathLike, kind: str,
                        flag: str = '--out') -> None:
    """Refuse an output whose suffix does not fit what is written into it
    (a checkpoint written to ``x.py`` would later be read as a config)."""
    out = Path(path)
    suffixes = output_suffixes(kind)
    if out.suffix.lower() in suffixes:
        return
    named = f'ends in {out.suffix!r}' if out.suffix else 'has no suffix'
    raise OutputError(
        f'{flag} {path}: this writes {KIND_WORDS[kind]}, but the name '
        f'{named}; name it with {" or ".join(suffixes[:4])}'
        f'{" (or another picture format)" if len(suffixes) > 4 else ""}, '
        f'e.g. {out.with_suffix(suffixes[0]).name} (--force does not '
        'change this)')


def is_url(path: PathLike) -> bool:
    return '://' in str(path)


def umask_mode(directory: bool = False) -> int:
    """The mode ``open()`` / ``mkdir()`` would give a new file / folder."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def _labelled(inputs: Inputs) -> List[Tuple[str, Path]]:
    """Local inputs as (label, path), URLs and Nones left out."""
    if inputs is None:
        return []
    pairs = inputs.items() if isinstance(inputs, Mapping) else \
        (('input', p) for p in inputs)
    return [(label, Path(p).expanduser()) for label, p in pairs
            if p is not None and not is_url(p)]


def _is_same_or_inside(path: Path, other: Path) -> bool:
    """``path`` is ``other`` (also through links), or inside the folder
    ``other``."""
    if path.exists() and other.exists() and os.path.samefile(path, other):
        return True
    path, other = path.resolve(), other.resolve()
    return path == other or (other.is_dir() and other in path.parents)


def _nearest_existing(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


def check_writable_dir(folder: PathLike, flag: str) -> None:
    """The folder exists and is writable, or can be made (its nearest
    existing ancestor is a writable folder)."""
    folder = Path(folder).expanduser()
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise OutputError(f'{flag}: cannot create {folder}: {existing} is a '
                          'file, not a folder; choose another location')
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f'{flag}: cannot write to {existing} (permission '
                          'denied or a read-only file system); choose a '
                          'writable location')


def check_not_input(path: PathLike, inputs: Inputs, flag: str) -> None:
    """``path`` is none of ``inputs`` and not inside an input folder."""
    path = Path(path).expanduser()
    for label, src in _labelled(inputs):
        if _is_same_or_inside(path, src):
            where = 'is' if src.is_file() or not src.exists() or \
                path.resolve() == src.resolve() else 'is inside'
            raise OutputError(
                f'{flag} {path} {where} the input {label} {src}; nothing '
                'given as input is ever overwritten, so write to another '
                'path')


def check_output_file(path: PathLike, inputs: Inputs = None,
                      force: bool = False, flag: str = '--out',
                      kind: Optional[str] = None) -> Path:
    """Refuse an output file that is an input, whose suffix does not fit
    the ``kind`` written into it (:data:`OUTPUT_SUFFIXES`; None: not
    checked), an existing file without ``force``, a read-only file, a
    folder, or in an unwritable folder."""
    out = Path(path).expanduser()
    if str(path).strip() == '' or out.name in ('', '.', '..'):
        raise OutputError(f'{flag} {str(path)!r} is not a file name')
    check_not_input(out, inputs, flag)
    if kind is not None and not out.is_dir():
        check_output_suffix(out, kind, flag)
    if out.is_dir():
        raise OutputError(f'{flag} {path} is a folder; name a file (e.g. '
                          f'{out / "out"}{out.suffix or ""})')
    if out.exists() or out.is_symlink():
        if not force:
            raise OutputError(f'{flag} {path} exists; pass --force to '
                              'overwrite it, or choose another name')
        # the write bit too: root's access() ignores a file made read-only
        if not os.access(out, os.W_OK) or not out.stat().st_mode & 0o200:
            raise OutputError(f'{flag} {path} is read-only; it is not '
                              'replaced even with --force (make it writable '
                              'or choose another name)')
    check_writable_dir(out.parent, flag)
    return out


def check_output_dir(path: PathLike, inputs: Inputs = None,
                     flag: str = '--out-dir') -> Path:
    """Refuse an output folder that is an existing file, an input (or
    inside an input folder), or not writable."""
    out = Path(path).expanduser()
    check_not_input(out, inputs, flag)
    if out.exists() and not out.is_dir():
        raise OutputError(f'{flag} {path} is a file; name a folder')
    check_writable_dir(out, flag)
    return out


def _make_parents(folder: Path) -> List[Path]:
    """mkdir -p; returns the folders it created, deepest first."""
    created = []
    while not folder.exists():
        created.append(folder)
        folder = folder.parent
    for d in reversed(created):
        d.mkdir(exist_ok=True)
    return created


def _temp_prefix(path: Path) -> str:
    return f'.{path.name}.{socket.gethostname()}.'


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def stale_temp_files(path: PathLike) -> List[Path]:
    """Temporary files of :func:`atomic_output` for ``path`` left by
    processes of this host that no longer run (a live writer's are never
    listed: two ranks may write the same prediction at once)."""
    path = Path(path)
    pattern = re.compile(re.escape(_temp_prefix(path)) + r'(\d+)\.[^.]+'
                         + re.escape(f'.tmp{path.suffix}'))
    if not path.parent.is_dir():
        return []
    stale = []
    for entry in path.parent.iterdir():
        found = pattern.fullmatch(entry.name)
        if found and int(found.group(1)) != os.getpid() and \
                not _is_running(int(found.group(1))):
            stale.append(entry)
    return stale


def is_out_of_room(err: BaseException) -> bool:
    """Whether ``err`` is a write that failed for lack of room: an
    ``OSError`` of :data:`DISK_FULL`, or torch's writer failing."""
    if isinstance(err, OSError):
        return err.errno in DISK_FULL
    return isinstance(err, RuntimeError) and any(
        text in str(err) for text in TORCH_WRITE_FAILED)


def _out_of_room(path: Path, err: BaseException) -> OutputWriteError:
    reason = err.strerror if isinstance(err, OSError) and err.strerror \
        else 'the disk is full, over quota or over a file-size limit'
    return OutputWriteError(
        f'cannot write {path}: {reason}; no partly written output is left: '
        'free space or choose another location')


def _create(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path`` only if ``path`` does not exist
    (``FileExistsError`` otherwise): a hard link, which fails on an
    existing name atomically; where the file system has none, the name is
    claimed by an exclusive create and then replaced."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (some network or FAT file systems)
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _move_into_place(tmp: Path, path: Path, replace: bool) -> None:
    """Rename ``tmp`` to ``path``; with ``replace=False`` only if ``path``
    does not exist."""
    if replace:
        os.replace(tmp, path)
        return
    try:
        _create(tmp, path)
    except FileExistsError:
        raise OutputError(
            f'{path} was written by another run while this one worked; it '
            'is kept and this run\'s result is not: pass --force to '
            'overwrite, or choose another name') from None


@contextmanager
def atomic_output(path: PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix, so writers
    that pick a format by suffix work); when the block ends normally it
    gets the umask's permissions and is renamed to ``path``, and temporary
    files of ``path`` left by killed processes are removed. On any error
    or Ctrl-C the temporary file, and the folders made for it, are removed
    and ``path`` is untouched. ``replace=False``: ``path`` must not exist
    when the block ends (:class:`OutputError` if another run wrote it
    meanwhile). A write that failed for lack of room is an
    :class:`OutputWriteError`."""
    path = Path(path).expanduser()
    created = _make_parents(path.parent)
    tmp = None
    try:
        fd, name = tempfile.mkstemp(prefix=f'{_temp_prefix(path)}'
                                    f'{os.getpid()}.',
                                    suffix=f'.tmp{path.suffix}',
                                    dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        try:
            yield tmp
        except (OSError, RuntimeError) as err:
            if is_out_of_room(err) and not isinstance(err, OutputError):
                raise _out_of_room(path, err) from err
            raise
        os.chmod(tmp, umask_mode())  # mkstemp makes it private (0600)
        _move_into_place(tmp, path, replace)
        tmp = None
        for stale in stale_temp_files(path):
            try:
                stale.unlink(missing_ok=True)
            except OSError:  # not ours to remove after all
                pass
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        for folder in created:
            try:
                folder.rmdir()
            except OSError:  # not empty: something else lives there now
                break
        raise


def write_atomic(path: PathLike, data: Union[str, bytes],
                 replace: bool = True) -> Path:
    """Write text or bytes to ``path`` through :func:`atomic_output`."""
    with atomic_output(path, replace) as tmp:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
    return Path(path)


# the most pixels a picture may have (400 MB as RGBA): far beyond any
# screen or print, and what a small machine can still render
MAX_PIXELS = 100_000_000


def check_figure_pixels(fig, dpi: float) -> None:
    """Refuse a ``dpi`` that makes ``fig`` too large to render (matplotlib
    would run out of memory or refuse it with a traceback)."""
    width, height = fig.get_size_inches()
    pixels = width * dpi * height * dpi
    if pixels > MAX_PIXELS:
        most = int((MAX_PIXELS / (width * height)) ** 0.5)
        raise OutputError(
            f'dpi={dpi:g} makes the {width:.1f}x{height:.1f}-inch picture '
            f'{width * dpi:.0f}x{height * dpi:.0f} pixels, more than the '
            f'{MAX_PIXELS:,} a picture may have; use dpi <= {most}')


def save_figure(fig, path: PathLike, replace: bool = True,
                **savefig_kwargs) -> Path:
    """``fig.savefig`` through :func:`atomic_output` (format from the
    suffix of ``path``, PNG without one), refused before rendering if it
    would have more than :data:`MAX_PIXELS`."""
    savefig_kwargs.setdefault('format',
                              Path(path).suffix[1:].lower() or 'png')
    dpi = savefig_kwargs.get('dpi')
    check_figure_pixels(fig, dpi if isinstance(dpi, (int, float))
                        else fig.dpi)  # None or 'figure': the figure's
    with atomic_output(path, replace) as tmp:
        fig.savefig(tmp, **savefig_kwargs)
    return Path(path)
