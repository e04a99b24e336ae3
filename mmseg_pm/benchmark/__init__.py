"""Benchmarks of dense and compressed Segmenters (``tools/benchmark.py``).

``variants`` builds the rows (same weights), ``measure`` counts FLOPs and
times and measures memory, ``report`` turns rows into ratios, target checks
and files, ``cli`` is the command line.
"""
from .cli import main
from .measure import (analytic_backbone_flops, peak_memory_bytes,
                      time_interleaved, tokens_per_layer)
from .variants import ModelSpec, expand_specs, parse_config_arg

__all__ = ['main', 'analytic_backbone_flops', 'peak_memory_bytes',
           'time_interleaved', 'tokens_per_layer', 'ModelSpec',
           'expand_specs', 'parse_config_arg']
