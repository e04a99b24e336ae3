"""The output rule of every file a tool writes (defined in
:mod:`mmseg_pm.utils.outputs`, below every floor that writes; re-exported
here for the public API)."""
from mmseg_pm.utils.outputs import (  # noqa: F401  (re-exported)
    OutputError, atomic_output, check_not_input, check_output_dir,
    check_output_file, check_writable_dir, is_url, save_figure,
    stale_temp_files, umask_mode, write_atomic)
