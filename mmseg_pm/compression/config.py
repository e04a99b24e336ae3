"""The ``compression=`` argument of the backbone: the checks every method's
config class parses its settings with, and :func:`parse_compression`, which
hands a dict to the config class of its method through the registry.

``method`` picks the compressor (default: Prune and Merge,
:data:`~.registry.DEFAULT_METHOD`); each method module declares its config
class next to its reducer and registers both with its description
(``register(SPEC)``). Nothing here imports a method.

Every setting is checked where it is parsed, and a bad one is a
:class:`~mmseg_pm.utils.errors.UsageError` naming the fix: numbers must be
finite and in their range, and a setting that would do nothing on the
model's token grid (a window or a cluster grid larger than it) is refused
with the grid named when the reducer is built for it.
"""
from __future__ import annotations

import math
import numbers
from typing import ClassVar, List, Optional, Protocol, Sequence, Tuple

from mmseg_pm.utils.errors import UsageError

from .reducer import TokenReducer
from .registry import DEFAULT_METHOD, method_spec


def check_keys(cfg: dict, known: set, method: str) -> None:
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise UsageError(f'unknown compression keys {unknown} for '
                         f'method={method!r}; expected some of '
                         f'{sorted(known)}')


def is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def block_index(value, name: str) -> int:
    """A block index: an integer (1.7 is not block 1)."""
    if not is_int(value):
        raise UsageError(f'{name} must hold integer block indices, got '
                         f'{value!r} ({type(value).__name__})')
    return int(value)


def check_number(value, name: str) -> float:
    """A finite real number (not a flag, not text, not NaN or infinite:
    every comparison with NaN is False, so a NaN setting would silently
    switch its step off)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UsageError(f'{name} must be a number, got {value!r} '
                         f'({type(value).__name__})')
    if not math.isfinite(value):
        raise UsageError(f'{name} must be a finite number, got {value!r}')
    return float(value)


def check_flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f'{name} must be True or False, got {value!r}')
    return value


def check_span(span) -> Tuple[int, int]:
    """A span: two block indices (first, last)."""
    if not isinstance(span, (list, tuple)) or len(span) != 2:
        raise UsageError('spans must be (first, last) pairs of block '
                         f'indices, got {span!r}')
    return (block_index(span[0], 'spans'), block_index(span[1], 'spans'))


def check_layers(layers: Sequence[int], num_layers: int,
                  name: str) -> List[int]:
    """Sorted, distinct block indices inside 0..num_layers-1."""
    if not isinstance(layers, (list, tuple)) or not layers:
        raise UsageError(f'{name} must be a non-empty list of block indices, '
                         f'got {layers!r}')
    layers = [block_index(i, name) for i in layers]
    if len(set(layers)) != len(layers):
        raise UsageError(f'{name} lists a block twice: {layers}')
    outside = [i for i in layers if not 0 <= i < num_layers]
    if outside:
        raise UsageError(f'{name} {outside} are outside blocks '
                         f'0..{num_layers - 1}')
    return sorted(layers)


def index_list(value, name: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise UsageError(f'{name} must be a list, got {value!r}')
    return list(value)


def check_within_grid(name: str, size: Tuple[int, int],
                       grid: Tuple[int, int], img_size, nothing: str,
                       hint: str) -> None:
    """Refuse an (h, w) setting larger than the model's token grid: on
    that grid it would do ``nothing``."""
    if size[0] > grid[0] or size[1] > grid[1]:
        raise UsageError(
            f'{name}={tuple(size)} is larger than the {grid[0]}x{grid[1]} '
            f'token grid of img_size={img_size}: {nothing}; use at most '
            f'{grid[0]}x{grid[1]} {hint}')


def per_layer(value, layers: List[int], name: str) -> list:
    """A scalar for every layer, or one value per layer (in given order)."""
    if isinstance(value, (list, tuple)):
        if len(value) != len(layers):
            raise UsageError(f'{name} has {len(value)} entries for '
                             f'{len(layers)} layers {layers}; give one per '
                             'layer or a single value')
        return list(value)
    return [value] * len(layers)


def positive_int(value, name: str) -> int:
    if not is_int(value) or value < 1:
        raise UsageError(f'{name} must be a positive integer, got {value!r}')
    return int(value)


class AnyCompressionConfig(Protocol):
    """What every registered config class offers."""

    method: ClassVar[str]

    @classmethod
    def from_dict(cls, cfg: dict, num_layers: int) -> 'AnyCompressionConfig':
        """The validated config of a ``compression=`` dict."""

    def build_reducer(self, grid: Tuple[int, int], embed_dims: int,
                      num_prefix: int, img_size) -> TokenReducer:
        """Its reducer for a backbone with this grid, width and
        ``num_prefix`` tokens before the patch tokens (the class token)."""


def parse_compression(cfg: Optional[dict],
                      num_layers: int) -> Optional[AnyCompressionConfig]:
    """The backbone's ``compression=`` dict as the config of its method
    (None: the dense model)."""
    if cfg is None:
        return None
    return method_spec(cfg.get('method', DEFAULT_METHOD)).config.from_dict(
        cfg, num_layers)


def build_reducer(config: Optional[AnyCompressionConfig],
                  grid: Tuple[int, int], embed_dims: int,
                  with_cls_token: bool = True,
                  img_size=None) -> Optional[TokenReducer]:
    """The token reducer of a parsed ``compression=`` (None: dense), for a
    backbone with this token grid, width and class token (the backbone's
    ``with_cls_token``: inside compression/, ``num_prefix`` tokens)."""
    if config is None:
        return None
    return config.build_reducer(tuple(grid), embed_dims, int(with_cls_token),
                                img_size)
