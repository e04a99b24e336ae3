"""Benchmarks of dense and compressed Segmenters (``tools/benchmark.py``).

``variants`` builds the rows (same weights), ``peers`` calibrates every
other registered method to the GFLOPs of each Prune-and-Merge row, ``measure`` counts FLOPs and
times and measures memory, ``backends`` runs the same modules under
onnxruntime and torch.compile, ``report`` turns rows into ratios, target
checks and files, ``pipeline`` runs them all (its command line is
:mod:`mmseg_pm.cli.benchmark`).
"""
from .measure import (analytic_backbone_flops, peak_memory_bytes,
                      tokens_per_layer)
from .peers import calibrate_peer, calibrate_peers
from .variants import ModelSpec, expand_specs, parse_config_arg

__all__ = ['analytic_backbone_flops', 'peak_memory_bytes',
           'tokens_per_layer', 'calibrate_peer',
           'calibrate_peers', 'ModelSpec', 'expand_specs',
           'parse_config_arg']
