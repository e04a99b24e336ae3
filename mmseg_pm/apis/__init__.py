"""Library entry points the tools call: reading a checkpoint into a model
(:mod:`.checkpoint`) and the output rule of every file a tool writes
(:mod:`.outputs`). Both raise :class:`UsageError` subclasses whose message
names the problem and the fix."""
from .checkpoint import (CheckpointError, CheckpointNotFound,
                         cached_download, check_finite,
                         check_runner_checkpoint, checkpoint_state_dict,
                         load_checkpoint_file, load_checkpoint_into,
                         local_checkpoint, runner_checkpoint,
                         save_checkpoint_atomic)
from .errors import UsageError
from .outputs import (OutputError, atomic_output, check_not_input,
                      check_output_dir, check_output_file, check_writable_dir,
                      save_figure, umask_mode, write_atomic)

__all__ = [
    'CheckpointError', 'CheckpointNotFound', 'OutputError', 'UsageError',
    'atomic_output', 'cached_download', 'check_finite', 'check_not_input',
    'check_output_dir', 'check_output_file', 'check_runner_checkpoint',
    'check_writable_dir', 'checkpoint_state_dict', 'load_checkpoint_file',
    'load_checkpoint_into', 'local_checkpoint', 'runner_checkpoint',
    'save_checkpoint_atomic', 'save_figure', 'umask_mode', 'write_atomic'
]
