"""Timing on a shared machine: every callable (or model) once in turn per
repeat, so that background load hits all of them alike; medians (and
minima) are reported. The study, the demo and the benchmark time with it."""
from __future__ import annotations

import gc
import statistics
import time
from typing import Callable, Dict, Hashable, List, Sequence

import torch
from torch import Tensor, nn


def synchronize(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def time_interleaved(calls: Dict[Hashable, Callable[[], object]],
                     warmup: int, repeats: int,
                     device: str = 'cpu') -> Dict[Hashable, List[float]]:
    """Seconds per call of every callable, ``repeats`` times each, the
    callables taking turns (after ``warmup`` untimed calls each)."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    synchronize(device)
    gc.collect()
    times = {key: [] for key in calls}
    for _ in range(repeats):
        for key, call in calls.items():
            start = time.perf_counter()
            call()
            synchronize(device)
            times[key].append(time.perf_counter() - start)
    return times


def images_per_second(models: Dict[Hashable, nn.Module], inputs: Tensor,
                      warmup: int, repeats: int,
                      device: str = 'cpu') -> Dict[Hashable, float]:
    """Median images/s of every segmentor's tensor forward on ``inputs``,
    the models taking turns (:func:`time_interleaved`), so that load from
    other jobs hits them alike."""
    def forward(model):
        with torch.inference_mode():
            return model(inputs, mode='tensor')

    seconds = time_interleaved(
        {name: (lambda m=m: forward(m)) for name, m in models.items()},
        warmup, repeats, device)
    return {name: summarise(t, inputs.shape[0])['images_per_s']
            for name, t in seconds.items()}


def summarise(seconds: Sequence[float], batch: int) -> dict:
    median = statistics.median(seconds)
    return dict(latency_ms=1e3 * median, latency_ms_min=1e3 * min(seconds),
                images_per_s=batch / median,
                images_per_s_best=batch / min(seconds),
                repeats=len(seconds))
