"""The benchmark's settings: one frozen dataclass whose defaults are those
of ``tools/benchmark.py`` (its parser reads them from here; where the
result files go, and the thread count, are the command's own)."""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import torch

from mmseg_pm.apis.config import configs_dir
from mmseg_pm.utils.errors import UsageError

from .measure import PARTS
from .peers import DEFAULT_TOLERANCE
from mmseg_pm.compression.registry import peer_specs

from .variants import (DEFAULT_VARIANTS, PEER_VARIANTS, REFERENCE,
                       parse_config_arg)

SCALING_CONFIGS = tuple(str(configs_dir() / 'segmenter' / name) for name in (
    'pm-segmenter_vit-t_mask_8xb1-160k_ade20k-512x512.py',
    'pm-segmenter_vit-s_mask_8xb1-160k_ade20k-512x512.py',
    'pm-segmenter_vit-b_mask_8xb1-160k_ade20k-512x512.py',
    'pm-segmenter_vit-l_mask_8xb1-160k_ade20k-640x640.py'))


@dataclasses.dataclass(frozen=True)
class BenchmarkSettings:
    """What one benchmark run measures (``tools/benchmark.py``'s options,
    same names; its ``--help`` says what each means). Checked on
    construction: one :class:`UsageError` naming the problem and the
    fix."""

    configs: Tuple[str, ...] = ()
    variants: Tuple[str, ...] = tuple(DEFAULT_VARIANTS)
    keep_rates: Optional[Tuple[float, ...]] = None
    match_tolerance: float = DEFAULT_TOLERANCE
    backends: Tuple[str, ...] = ('onnx', 'compile')
    # every peer an ONNX graph can hold is tried (a failure is recorded)
    onnx_variants: Tuple[str, ...] = ('off', REFERENCE) + tuple(
        s.name for s in peer_specs() if s.fixed_shapes)
    compile_variants: Tuple[str, ...] = ('off', REFERENCE)
    onnx_dir: Optional[str] = None
    parts: Tuple[str, ...] = PARTS
    batch_sizes: Tuple[int, ...] = (1, 8)
    device: str = 'cpu'
    dtypes: Tuple[str, ...] = ('fp32', )
    warmup: int = 2
    repeats: int = 10
    memory: str = 'all'
    memory_batch_size: Optional[int] = None
    profile: bool = False
    resolutions: Tuple[int, ...] = ()
    scale_variants: Tuple[str, ...] = ('off', REFERENCE)
    scaling: bool = False
    scaling_configs: Tuple[str, ...] = SCALING_CONFIGS
    scaling_peers: Tuple[str, ...] = tuple(PEER_VARIANTS)
    scaling_large_gflops: float = 500.0
    scaling_large_repeats: int = 3
    cfg_options: Optional[dict] = None

    def __post_init__(self):
        if self.device.startswith('cuda') and not torch.cuda.is_available():
            raise UsageError(f'--device {self.device}: no CUDA device here; '
                             'use --device cpu')
        if not self.device.startswith(('cpu', 'cuda')):
            raise UsageError(f"--device must be 'cpu' or 'cuda[:i]', got "
                             f'{self.device!r}')
        if not self.configs and not self.scaling:
            raise UsageError('give at least one CONFIG, or --scaling')
        for arg in self.configs:
            parse_config_arg(arg)
        if not 0 < self.match_tolerance < 1:
            raise UsageError('--match-tolerance must be in (0, 1), e.g. '
                             '0.02')
        peers = [v for v in self.variants if v in PEER_VARIANTS]
        if peers and REFERENCE not in self.variants:
            raise UsageError(f'--variants {" ".join(peers)} are matched to '
                             f"the GFLOPs of the '{REFERENCE}' rows: add "
                             f'{REFERENCE} to --variants')
        if self.warmup < 0 or self.repeats < 1 or \
                min(self.batch_sizes, default=0) < 1:
            raise UsageError('need --warmup >= 0, --repeats >= 1 and '
                             '--batch-sizes >= 1')

    @property
    def memory_batch(self) -> int:
        """Batch of the memory steps: ``memory_batch_size`` or the
        largest timed batch."""
        return self.memory_batch_size or max(self.batch_sizes)
