"""The quality study at matched FLOPs (``tools/study.py``): every
compression method on one trained dense Segmenter at the same GFLOPs, mIoU
before and after the same distillation fine-tune.

The variants and their knobs are :mod:`mmseg_pm.apis.knobs` (each method's
knob is part of its description, :mod:`mmseg_pm.compression.registry`),
the FLOPs calibration :mod:`mmseg_pm.apis.calibration` (both shared with
the benchmark); here: the study's defaults, the merge-window statistics
(:mod:`.windows`), the table and plot (:mod:`.report`), the settings
(:mod:`.settings`) and the pipeline
(:mod:`.pipeline`, imported on its own: it loads mmseg).
"""
from .report import (COLUMNS, best_per_budget, format_markdown, format_table,
                     format_windows_markdown, plot_study)
from .settings import DEFAULT_BUDGETS, DEFAULT_METHODS, StudySettings
from .windows import empty_neighbourhoods, window_stats
