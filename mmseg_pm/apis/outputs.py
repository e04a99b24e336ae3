"""The output rule of every tool that writes files.

Before any work: an output is never one of the inputs (config, checkpoint,
image, scores, data directory), never an existing file unless the user
passed ``--force`` (and never a read-only one), and its directory must be
writable. Writing: a temporary file next to the output, renamed over it
only when complete, so an error or Ctrl-C leaves neither a half-written
file nor the temporary one (nor directories made for it). Files get the
user's normal permissions (``0666 & ~umask``), not mkstemp's private 0600.
"""
from __future__ import annotations

import os
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
                      force: bool = False, flag: str = '--out') -> Path:
    """Refuse an output file that is an input, an existing file without
    ``force``, a read-only file, a folder, or in an unwritable folder."""
    out = Path(path).expanduser()
    if str(path).strip() == '' or out.name in ('', '.', '..'):
        raise OutputError(f'{flag} {str(path)!r} is not a file name')
    check_not_input(out, inputs, flag)
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


@contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix, so writers
    that pick a format by suffix work); when the block ends normally it
    gets the umask's permissions and is renamed to ``path``. On any error
    or Ctrl-C the temporary file, and the folders made for it, are removed
    and ``path`` is untouched."""
    path = Path(path).expanduser()
    created = _make_parents(path.parent)
    tmp = None
    try:
        fd, name = tempfile.mkstemp(prefix=f'.{path.name}.',
                                    suffix=f'.tmp{path.suffix}',
                                    dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        yield tmp
        os.chmod(tmp, umask_mode())  # mkstemp makes it private (0600)
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        for folder in created:
            try:
                folder.rmdir()
            except OSError:  # not empty: something else lives there now
                break
        raise


def write_atomic(path: PathLike, data: Union[str, bytes]) -> Path:
    """Write text or bytes to ``path`` through :func:`atomic_output`."""
    with atomic_output(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
    return Path(path)


def save_figure(fig, path: PathLike, **savefig_kwargs) -> Path:
    """``fig.savefig`` through :func:`atomic_output` (format from the
    suffix of ``path``, PNG without one)."""
    savefig_kwargs.setdefault('format',
                              Path(path).suffix[1:].lower() or 'png')
    with atomic_output(path) as tmp:
        fig.savefig(tmp, **savefig_kwargs)
    return Path(path)
