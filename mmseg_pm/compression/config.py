"""The ``compression=`` argument of the backbone, parsed and validated."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from .merge import IMPLS
from .structure import ASSIGN_RULES

MODES = ('layer', 'span')


@dataclass(frozen=True)
class CompressionConfig:
    """Which blocks are compressed and how.

    mode 'layer': every block in ``layers`` merges its input, runs on the
    centres and reconstructs its output. mode 'span': each ``(m, r)`` in
    ``spans`` merges once before block m and reconstructs after block r.
    ``units`` is the common form: a list of inclusive ``(first, last)``.
    """

    mode: str = 'layer'
    units: List[Tuple[int, int]] = field(default_factory=list)
    keep_rate: float = 0.7
    prune_rate: float = 0.0
    rule: str = 'row'
    impl: str = 'sparse'
    trainable: bool = True

    @classmethod
    def from_dict(cls, cfg: Optional[dict],
                  num_layers: int) -> Optional['CompressionConfig']:
        if cfg is None:
            return None
        cfg = dict(cfg)
        known = {'mode', 'layers', 'spans', 'keep_rate', 'prune_rate', 'rule',
                 'impl', 'trainable'}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f'unknown compression keys {unknown}; '
                             f'expected some of {sorted(known)}')
        mode = cfg.pop('mode', 'layer')
        if mode not in MODES:
            raise ValueError(f'compression mode must be one of {MODES}, '
                             f'got {mode!r}')
        layers = cfg.pop('layers', None)
        spans = cfg.pop('spans', None)
        if mode == 'layer':
            if spans is not None or layers is None:
                raise ValueError("compression mode 'layer' takes layers=[...] "
                                 '(block indices), not spans')
            units = [(int(i), int(i)) for i in layers]
        else:
            if layers is not None or spans is None:
                raise ValueError("compression mode 'span' takes "
                                 'spans=[(first, last), ...], not layers')
            units = [(int(a), int(b)) for a, b in spans]
        if not units:
            raise ValueError('compression lists no layers; use '
                             'compression=None for the dense model')
        units.sort()
        for first, last in units:
            if not 0 <= first <= last < num_layers:
                raise ValueError(
                    f'compressed unit {(first, last)} is outside blocks '
                    f'0..{num_layers - 1} (or has first > last)')
        for (_, last), (first, _) in zip(units, units[1:]):
            if first <= last:
                raise ValueError(f'compressed layers/spans overlap: {units}')
        config = cls(mode=mode, units=units, **cfg)
        config.validate()
        return config

    def validate(self) -> None:
        if not 0 < self.keep_rate <= 1:
            raise ValueError(f'keep_rate must be in (0, 1], got '
                             f'{self.keep_rate}')
        if not 0 <= self.prune_rate < 1:
            raise ValueError(f'prune_rate must be in [0, 1), got '
                             f'{self.prune_rate}')
        if self.keep_rate + self.prune_rate > 1:
            raise ValueError(
                f'keep_rate + prune_rate = {self.keep_rate + self.prune_rate}'
                ' > 1: the kept and pruned fractions of the tokens cannot '
                'overlap; lower one of them')
        if self.rule not in ASSIGN_RULES:
            raise ValueError(f'rule must be one of {ASSIGN_RULES}, got '
                             f'{self.rule!r}')
        if self.impl not in IMPLS:
            raise ValueError(f'impl must be one of {IMPLS}, got {self.impl!r}')

    @property
    def layers(self) -> List[int]:
        """Every block that runs on compressed tokens."""
        return [i for a, b in self.units for i in range(a, b + 1)]
