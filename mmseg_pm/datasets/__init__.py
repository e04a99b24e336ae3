"""Data sets and data generators for mmseg_pm."""
from .synthetic_ade import (CLASS_IDS, CLASS_NAMES, SYNTHETIC_CLASSES,
                            TRAIN_LABELS, make_synthetic_ade)

__all__ = [
    'CLASS_IDS', 'CLASS_NAMES', 'SYNTHETIC_CLASSES', 'TRAIN_LABELS',
    'make_synthetic_ade'
]
