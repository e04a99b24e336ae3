"""Checkpoint and logger hooks that write through the output rule."""
import io
import json
from contextlib import contextmanager
from pathlib import Path

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook, LoggerHook
from mmengine.hooks import checkpoint_hook as mmengine_checkpoint_hook
from mmseg.registry import HOOKS

from mmseg_pm.utils.outputs import is_url, write_atomic

ATOMIC_BACKEND = 'atomic_local'


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend whose writes go to a temporary sibling
    renamed when complete: a checkpoint is whole or absent, never cut off
    by Ctrl-C, SIGTERM or a full disk."""

    def put(self, obj: bytes, filepath) -> None:
        write_atomic(filepath, obj)

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        write_atomic(filepath, obj.encode(encoding))


register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)


@contextmanager
def _text_file_written_atomically(path):
    """What ``open(path, 'w')`` gives a ``with`` block, written to ``path``
    atomically when the block completes (nothing when it fails)."""
    buffer = io.StringIO()
    yield buffer
    write_atomic(path, buffer.getvalue())


@contextmanager
def _atomic_text_writes_in(module):
    """Within the block, ``open(path, 'w')`` in ``module`` writes
    atomically (mmengine's CheckpointHook writes ``last_checkpoint`` with
    a plain ``open``); other modes are the built-in ``open``."""
    def atomic_open(file, mode='r', *args, **kwargs):
        if mode in ('w', 'wt') and not args and not kwargs:
            return _text_file_written_atomically(file)
        return open(file, mode, *args, **kwargs)

    module.open = atomic_open
    try:
        yield
    finally:
        del module.open


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` (same arguments) whose checkpoints and
    ``last_checkpoint`` are written to a temporary file and renamed: an
    interrupted or failing save leaves the previous state, never a
    truncated ``iter_N.pth``. Local folders only: with an ``out_dir`` URL
    or explicit ``backend_args`` it is mmengine's hook unchanged."""

    def __init__(self, *args, out_dir=None, backend_args=None,
                 file_client_args=None, **kwargs):
        if backend_args is None and file_client_args is None and (
                out_dir is None or not is_url(out_dir)):
            backend_args = dict(backend=ATOMIC_BACKEND)
        super().__init__(*args, out_dir=out_dir, backend_args=backend_args,
                         file_client_args=file_client_args, **kwargs)

    def _save_checkpoint_with_step(self, runner, step, meta):
        with _atomic_text_writes_in(mmengine_checkpoint_hook):
            super()._save_checkpoint_with_step(runner, step, meta)


@HOOKS.register_module()
class RankZeroLoggerHook(LoggerHook):
    """``LoggerHook`` (same arguments) whose test metrics JSON is written
    by rank 0 alone, atomically. mmengine's writes it from every rank into
    one path, and concurrent writers can leave it corrupt."""

    def after_test_epoch(self, runner, metrics=None) -> None:
        tag, log_str = runner.log_processor.get_log_after_epoch(
            runner, len(runner.test_dataloader), 'test', with_non_scalar=True)
        runner.logger.info(log_str)
        if is_main_process():
            write_atomic(Path(runner.log_dir) / self.json_log_path,
                         json.dumps(self._process_tags(tag)))
