"""The output rule of every tool that writes files
(mmseg_pm.utils.outputs): what an output may be, and how it is written."""
import os

import pytest
import torch

from mmseg_pm.utils.checkpoint import save_checkpoint_atomic
from mmseg_pm.utils.outputs import (OutputError, atomic_output,
                                    check_output_dir, check_output_file,
                                    check_output_suffix, output_suffixes,
                                    save_figure, write_atomic)


def test_output_file_rule(tmp_path):
    config = tmp_path / 'cfg.py'
    config.write_text('x = 1\n')
    link = tmp_path / 'link.py'
    link.symlink_to(config)
    hard = tmp_path / 'hard.py'
    os.link(config, hard)
    data = tmp_path / 'data'
    data.mkdir()
    for out, message in ((config, 'is the input config'),
                         (link, 'is the input config'),
                         (hard, 'is the input config'),
                         (data / 'x.png', 'is inside the input data'),
                         (data, 'is the input data')):
        with pytest.raises(OutputError, match=message):
            check_output_file(out, dict(config=config, data=data),
                              force=True)
    with pytest.raises(OutputError, match='exists; pass --force'):
        check_output_file(config, None)
    with pytest.raises(OutputError, match='is a folder; name a file'):
        check_output_file(data, None)
    with pytest.raises(OutputError, match='is a file, not a folder'):
        check_output_file(config / 'sub' / 'x.pth', None)
    with pytest.raises(OutputError, match='is a file; name a folder'):
        check_output_dir(config)
    assert check_output_file(tmp_path / 'new' / 'dir' / 'x.pth', None)
    assert not (tmp_path / 'new').exists()  # checking creates nothing
    assert config.read_text() == 'x = 1\n'


@pytest.mark.parametrize('umask', [0o022, 0o027])
def test_outputs_follow_the_umask(tmp_path, umask):
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib.figure import Figure

    old = os.umask(umask)
    try:
        save_checkpoint_atomic({'w': torch.zeros(2)}, tmp_path / 'a.pth')
        write_atomic(tmp_path / 'b.json', '{}\n')
        save_figure(Figure(figsize=(1, 1)), tmp_path / 'c.png', dpi=10)
    finally:
        os.umask(old)
    for name in ('a.pth', 'b.json', 'c.png'):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a.pth', 'b.json',
                                                          'c.png']


@pytest.mark.parametrize('error', [RuntimeError, KeyboardInterrupt])
def test_a_failed_write_leaves_nothing(tmp_path, error):
    existing = tmp_path / 'keep.pth'
    existing.write_bytes(b'old')
    for out in (existing, tmp_path / 'made' / 'for' / 'it.pth'):
        with pytest.raises(error):
            with atomic_output(out) as tmp:
                tmp.write_bytes(b'half')
                raise error()
    assert existing.read_bytes() == b'old'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['keep.pth']


@pytest.mark.parametrize('kind,good,bad', [
    ('checkpoint', 'pruned.pth', 'other_config.py'),
    ('checkpoint', 'w.PT', 'w'),
    ('onnx', 'model.onnx', 'model.pth'),
    ('json', 'results.json', 'results.md'),
    ('picture', 'tokens.svg', 'tokens.pth')])
def test_an_output_is_named_for_what_it_holds(tmp_path, kind, good, bad):
    """A checkpoint written to ``other_config.py`` would be read as a config
    later: the suffix must fit, with ``force`` too; the error names the
    suffix to use."""
    check_output_suffix(good, kind)
    assert check_output_file(tmp_path / good, None, kind=kind)
    existing = tmp_path / bad
    existing.write_text('keep me')
    with pytest.raises(OutputError, match=r'e\.g\. .*--force does not'):
        check_output_file(existing, None, force=True, kind=kind)
    assert existing.read_text() == 'keep me'
    assert output_suffixes(kind)[0] in str(
        pytest.raises(OutputError, check_output_suffix, bad, kind).value)
    with pytest.raises(ValueError, match='unknown output kind'):
        output_suffixes('spreadsheet')


# ---------------------------------------------------------------- full disk
# Writes each kind of output in a process whose files may not grow past
# LIMIT bytes (what a full disk looks like to a writer: torch's zip writer
# raises RuntimeError, Python's OSError) and prints how each write ended.
FULL_DISK = """
import json, sys
from pathlib import Path
import numpy as np
import torch
from matplotlib.figure import Figure
from mmseg_pm.utils.checkpoint import save_checkpoint_atomic
from mmseg_pm.utils.outputs import save_figure, write_atomic
out = Path(sys.argv[1])
noise = Figure(figsize=(4, 4))
noise.figimage(np.random.default_rng(0).random((400, 400)))
writes = dict(
    checkpoint=lambda: save_checkpoint_atomic(
        {'w': torch.randn(100_000)}, out / 'model.pth'),
    text=lambda: write_atomic(out / 'results.json', 'x' * 200_000),
    picture=lambda: save_figure(noise, out / 'noise.png', dpi=100))
for name, write in writes.items():
    try:
        write()
        print(json.dumps([name, 'written']))
    except Exception as err:
        print(json.dumps([name, type(err).__name__, str(err),
                          isinstance(err, OSError)]))
"""
LIMIT = 50_000


def limited_file_size():
    """In the child: files stop at LIMIT bytes; the write fails instead of
    the process being killed (SIGXFSZ ignored)."""
    import resource
    import signal
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def test_a_full_disk_is_one_line_naming_the_file(tmp_path):
    import json
    import subprocess
    import sys

    from tests.helpers import ROOT

    out = tmp_path / 'out'
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND='Agg')
    proc = subprocess.run([sys.executable, '-c', FULL_DISK, str(out)],
                          env=env, capture_output=True, text=True,
                          timeout=300, preexec_fn=limited_file_size)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = {r[0]: r[1:] for r in map(json.loads,
                                        proc.stdout.splitlines())}
    assert set(results) == {'checkpoint', 'text', 'picture'}
    for name, file in (('checkpoint', 'model.pth'),
                       ('text', 'results.json'), ('picture', 'noise.png')):
        kind, message, is_os_error = results[name]
        assert kind == 'OutputWriteError' and is_os_error, results[name]
        assert message.startswith(f'cannot write {out / file}: ')
        assert message.endswith('no partly written output is left: free '
                                'space or choose another location')
        assert '\n' not in message
    assert not list(out.iterdir())  # no temporary file left


# --------------------------------------------------------- two writers
def test_the_second_writer_of_a_new_output_is_refused(tmp_path):
    """Two writers of the same new file, both checked before it existed:
    the first to finish writes it, the second is refused (not the last
    rename wins); with ``replace`` (--force) the last one wins."""
    out = tmp_path / 'model.pth'
    with pytest.raises(OutputError, match='was written by another run while'
                       ' this one worked.*pass --force'):
        with atomic_output(out, replace=False) as first:
            first.write_text('first')
            write_atomic(out, 'second', replace=False)
    assert out.read_text() == 'second'
    write_atomic(out, 'forced', replace=True)
    assert out.read_text() == 'forced'
    assert [p.name for p in tmp_path.iterdir()] == ['model.pth']


def test_without_hard_links_a_new_output_is_still_exclusive(
        tmp_path, monkeypatch):
    """Where the file system has no hard links, the name is claimed by an
    exclusive create: the same outcome."""
    def no_links(*args):
        raise PermissionError(1, 'Operation not permitted')

    monkeypatch.setattr(os, 'link', no_links)
    test_the_second_writer_of_a_new_output_is_refused(tmp_path)


def _write_when_told(path, started, go, results):
    """A second process: opens the output, says so, waits, finishes."""
    try:
        with atomic_output(path, replace=False) as tmp:
            tmp.write_text('slow')
            started.set()
            go.wait(60)
        results.put('written')
    except OutputError as err:
        results.put(str(err))


def test_two_processes_writing_the_same_new_output(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context('fork')
    out = tmp_path / 'results.json'
    started, go, results = context.Event(), context.Event(), context.Queue()
    slow = context.Process(target=_write_when_told,
                           args=(out, started, go, results))
    slow.start()
    try:
        assert started.wait(60)
        write_atomic(out, 'fast', replace=False)
    finally:
        go.set()
        slow.join(60)
    assert slow.exitcode == 0
    assert 'was written by another run' in results.get(timeout=10)
    assert out.read_text() == 'fast'
    assert [p.name for p in tmp_path.iterdir()] == ['results.json']


def test_a_picture_too_large_is_refused_before_rendering(tmp_path):
    import re

    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    with pytest.raises(OutputError, match=r'dpi=20000 makes the 10.0x4.0-inch'
                       r' picture 200000x80000 pixels.*use dpi <= (\d+)$'
                       ) as err:
        save_figure(fig, tmp_path / 'tokens.png', dpi=20000)
    most = int(re.search(r'dpi <= (\d+)$', str(err.value)).group(1))
    assert 10 * 4 * most ** 2 <= 100_000_000 < 10 * 4 * (most + 1) ** 2
    assert not list(tmp_path.iterdir())
