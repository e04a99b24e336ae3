"""Run a tool with a fault injected halfway through writing a file.

``python fault_injection.py FAULT PATTERN TOOL ARGS...`` runs
``tools/TOOL.py ARGS`` in this process; the first file written whose name
matches the regular expression PATTERN (the final name or a temporary one
made from it) gets half of its bytes when it is flushed, then FAULT
happens:

* ``enospc``: ``OSError(ENOSPC)``, what a full disk raises;
* ``sigterm`` / ``sigint``: the process sends itself the signal (what
  ``kill`` / ``timeout`` / a scheduler, or Ctrl-C, do).

Writes are caught where every writer ends up: Python's ``open`` (mmengine's
file backends, PIL, ``Path.write_bytes``) and ``torch.save`` (whose C++
writer opens file names itself). A machine-independent stand-in for a
small tmpfs and a well-timed ``kill``.
"""
import builtins
import errno
import io
import os
import re
import runpy
import signal
import sys
from pathlib import Path

import torch

FAULT, PATTERN = sys.argv[1], re.compile(sys.argv[2])
TOOL, ARGS = sys.argv[3], sys.argv[4:]
state = dict(fired=False)
real_open, real_save = builtins.open, torch.save


def fire(file, data) -> None:
    """Write half of ``data`` (bytes or text) to the open ``file``, then
    the fault."""
    state['fired'] = True
    file.write(data[:len(data) // 2])
    file.flush()
    if FAULT == 'enospc':
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    os.kill(os.getpid(), dict(sigterm=signal.SIGTERM,
                              sigint=signal.SIGINT)[FAULT])
    raise AssertionError('the signal did not interrupt the write')


def targeted(name) -> bool:
    return not state['fired'] and isinstance(name, (str, os.PathLike)) and \
        PATTERN.search(Path(name).name) is not None


class FaultyFile:
    """A file opened for writing that faults when its content reaches the
    disk (a buffered writer meets a full disk at flush or close, after
    its writes have returned)."""

    def __init__(self, file):
        self.file = file
        self.parts = []

    def write(self, data):
        self.parts.append(data if isinstance(data, str) else bytes(data))
        return len(data)

    def flush(self):
        pass

    def close(self):
        parts, self.parts = self.parts, None
        if parts is None:
            return
        try:
            fire(self.file, (parts[0][:0] if parts else b'').join(parts))
        finally:
            self.file.close()

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def faulty_open(file, mode='r', *args, **kwargs):
    handle = real_open(file, mode, *args, **kwargs)
    if any(m in mode for m in 'wax') and targeted(file):
        return FaultyFile(handle)
    return handle


def faulty_save(obj, f, *args, **kwargs):
    if not targeted(f):
        return real_save(obj, f, *args, **kwargs)
    buffer = io.BytesIO()
    real_save(obj, buffer, *args, **kwargs)
    with real_open(f, 'wb') as file:
        fire(file, buffer.getvalue())


# a shell starts background jobs with SIGINT ignored, and Python then keeps
# it so: restore Ctrl-C's KeyboardInterrupt, whoever started the tests
signal.signal(signal.SIGINT, signal.default_int_handler)
builtins.open = io.open = faulty_open
torch.save = faulty_save
tools = Path(__file__).resolve().parents[2] / 'tools'
sys.argv = [str(tools / f'{TOOL}.py'), *ARGS]
runpy.run_path(sys.argv[0], run_name='__main__')
