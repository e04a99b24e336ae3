"""The quality study at matched FLOPs (``tools/study.py``): every
compression method on one trained dense Segmenter at the same GFLOPs, mIoU
before and after the same distillation fine-tune.

The methods and their knobs are :mod:`mmseg_pm.apis.knobs`, the FLOPs
calibration :mod:`mmseg_pm.apis.calibration` (both shared with the
benchmark); here: the study's defaults, the merge-window statistics
(:mod:`.windows`), the table and plot (:mod:`.report`), the settings
(:mod:`.settings`) and the pipeline
(:mod:`.pipeline`, imported on its own: it loads mmseg).
"""
from mmseg_pm.apis.calibration import (CalibrationError, calibrate_knob,
                                       check_within)
from mmseg_pm.apis.knobs import (HOURGLASS_DEPTH, HOURGLASS_SHARE, METHODS,
                                 Method, algm_layers, compression_for,
                                 hourglass_flops, hourglass_path,
                                 hourglass_setting, keep_rate_for, knob_range,
                                 knob_text, mstm_layers, pm_layers,
                                 span_units, squareish_grids, tome_r,
                                 tome_schedule)

from .report import (COLUMNS, best_per_budget, format_markdown, format_table,
                     format_windows_markdown, plot_study)
from .settings import DEFAULT_BUDGETS, DEFAULT_METHODS, StudySettings
from .windows import empty_neighbourhoods, window_stats
