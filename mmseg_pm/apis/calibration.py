"""FLOPs calibration: the integer knob of a method whose counted FLOPs are
nearest a target (a bisection over a monotone knob), and the check that
the nearest is near enough. The quality study and the benchmark's peers
share it, so a method at a budget means the same model in both."""
from __future__ import annotations

from typing import Callable, Dict, Tuple


class CalibrationError(ValueError):
    """No knob value brings a method close enough to the FLOPs target."""


def calibrate_knob(flops_at: Callable[[int], float], lo: int, hi: int,
                   target: float) -> Tuple[int, float]:
    """The knob in ``[lo, hi]`` whose FLOPs are nearest ``target``.

    ``flops_at`` must be monotone in the knob (either direction); the
    search bisects, so it costs about log2(hi - lo) evaluations. Ties go to
    the smaller knob. Returns (knob, its FLOPs).
    """
    if lo > hi:
        raise ValueError(f'empty knob range [{lo}, {hi}]')
    cache: Dict[int, float] = {}

    def flops(k: int) -> float:
        if k not in cache:
            cache[k] = float(flops_at(k))
        return cache[k]

    increasing = flops(hi) >= flops(lo)
    a, b = lo, hi
    while b - a > 1:
        mid = (a + b) // 2
        if (flops(mid) < target) == increasing:
            a = mid
        else:
            b = mid
    best = min((a, b), key=lambda k: (abs(flops(k) - target), k))
    return best, flops(best)


def check_within(method: str, achieved: float, target: float,
                 tolerance: float) -> None:
    """Raise :class:`CalibrationError` if ``achieved`` misses ``target`` by
    more than the relative ``tolerance``."""
    miss = achieved / target - 1
    if abs(miss) > tolerance:
        raise CalibrationError(
            f'{method}: the nearest setting gives {achieved / 1e9:.4f} '
            f'GFLOPs, {100 * miss:+.1f}% from the target '
            f'{target / 1e9:.4f} (tolerance {100 * tolerance:.0f}%); the '
            'target is outside what this method reaches on this model')
