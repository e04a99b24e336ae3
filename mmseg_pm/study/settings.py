"""The study's settings: one frozen dataclass whose defaults are those of
``tools/study.py`` (its parser reads them from here). Its fields but the
outputs, the selection and the speed repeats stamp the cached stages
(:func:`mmseg_pm.study.pipeline.run_study`), so a changed setting recomputes
what depends on it."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Tuple

from mmseg_pm.apis.knobs import METHODS
from mmseg_pm.compression.registry import peer_specs
from mmseg_pm.utils.errors import UsageError

# What tools/study.py runs unless told otherwise: the authors' Prune and
# Merge, the default (every block compressed), the same with block 0 dense
# with static and with content-aware windows, the best other placement of
# the 2026-12-01 study (lattice), and every other registered method. The
# other PM variants (span mode, the other rules and placements,
# proportional attention) stay selectable with --methods; docs/study.md
# keeps their measured tables.
DEFAULT_METHODS = ('pm-row', 'res-random', 'res-content', 'res-content-all',
                   'res-lattice') + \
    tuple(s.name for s in peer_specs())
# The budgets (fractions of the dense GFLOPs). 40 %, not 35 %: the
# variants with block 0 dense (as in the released Segmenter configs) cannot
# go below 37.9 % on the study's 8-block model (the decoder costs about a
# quarter).
DEFAULT_BUDGETS = (0.7, 0.5, 0.4)
# Fields that do not change a cached stage's result.
UNSTAMPED = ('work_dir', 'out_dir', 'fresh', 'methods', 'budgets',
             'speed_repeats')


@dataclasses.dataclass(frozen=True)
class StudySettings:
    """Everything one study run depends on (``tools/study.py``'s options,
    same names; ``data_root`` None: ``work_dir``/data). Checked on
    construction; ``budgets`` end up distinct and largest first."""

    work_dir: str = 'work_dirs/study'
    out_dir: str = 'benchmarks/study'
    data_root: Optional[str] = None
    budgets: Tuple[float, ...] = DEFAULT_BUDGETS
    methods: Tuple[str, ...] = DEFAULT_METHODS
    dense_iters: int = 600
    finetune_iters: int = 60
    score_iters: int = 20
    seed: int = 0
    img_size: int = 96
    num_layers: int = 8
    num_train: int = 400
    num_val: int = 100
    batch_size: int = 8
    prune_rate: float = 0.0
    tolerance: float = 0.02
    speed_repeats: int = 60
    fresh: bool = False

    def __post_init__(self):
        for name in ('dense_iters', 'finetune_iters', 'score_iters',
                     'num_train', 'num_val', 'batch_size', 'speed_repeats'):
            if getattr(self, name) < 1:
                raise UsageError(f'--{name.replace("_", "-")} must be >= 1')
        if self.img_size % 8:
            raise UsageError('--img-size must be a multiple of the patch '
                             'size 8')
        if self.num_layers < 2:
            raise UsageError('--num-layers must be >= 2 (block 0 stays '
                             'dense)')
        if any(not 0 < b < 1 for b in self.budgets):
            raise UsageError('--budgets must lie in (0, 1)')
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise UsageError(f'unknown --methods {unknown}; choose from '
                             f'{list(METHODS)}')
        if not 0 <= self.prune_rate < 1 or not 0 < self.tolerance < 1:
            raise UsageError('need 0 <= --prune-rate < 1 and 0 < --tolerance '
                             '< 1')
        fix = partial_setter(self)
        fix('budgets', tuple(sorted(set(self.budgets), reverse=True)))
        fix('methods', tuple(self.methods))
        fix('work_dir', str(self.work_dir))
        fix('out_dir', str(self.out_dir))
        fix('data_root', str(Path(self.work_dir) / 'data')
            if self.data_root is None else str(self.data_root))

    def stamp(self) -> dict:
        """The settings a cached variant was computed with."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in UNSTAMPED}


def partial_setter(obj):
    """Set fields of a frozen dataclass while it is built."""
    return lambda name, value: object.__setattr__(obj, name, value)
