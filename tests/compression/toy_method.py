"""A seventh method that exists only for the tests: one module, one
registration (``register(SPEC)``, done by the test that needs it), and its
study and benchmark rows appear by themselves.

The reducer merges nothing: every block runs on all tokens, so the model
is the dense one (what a test can check without an oracle of its own).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, List, Tuple

from torch import Tensor, nn

from mmseg_pm.compression.config import check_keys
from mmseg_pm.compression.reducer import TokenReducer
from mmseg_pm.compression.registry import MethodSpec, ModelShape, no_options


class MergeNothing(nn.Module, TokenReducer):
    """Runs every block on all tokens."""

    method = 'merge-nothing'

    def start(self, x: Tensor, hw: Tuple[int, int]) -> None:
        return None

    def run_block(self, i: int, block: nn.Module, x: Tensor, state):
        return block(x), state

    def full_grid(self, i: int, x: Tensor, state) -> Tensor:
        return x

    def blocks(self, num_layers: int) -> List[int]:
        return []

    def merging_blocks(self) -> List[int]:
        return []

    def tokens_per_block(self, num_tokens: int, num_layers: int) -> List[int]:
        return [num_tokens] * num_layers


@dataclass(frozen=True)
class MergeNothingConfig:
    """``compression=dict(method='merge-nothing')``: no setting."""

    method: ClassVar[str]  # set by register()

    @classmethod
    def from_dict(cls, cfg: dict, num_layers: int) -> 'MergeNothingConfig':
        check_keys(dict(cfg), {'method'}, cls.method)
        return cls()

    def build_reducer(self, grid: Tuple[int, int], embed_dims: int,
                      num_prefix: int, img_size) -> MergeNothing:
        return MergeNothing()


def _knob_compression(knob: int, shape: ModelShape, **options) -> dict:
    no_options(SPEC.name, options)
    return dict(method=SPEC.name)


SPEC = MethodSpec(
    name=MergeNothing.method, label='Merge nothing',
    knob='nothing: every value is the dense model',
    knob_range=lambda shape: (0, 0), knob_compression=_knob_compression,
    knob_text=lambda knob, shape: 'dense', fixed_shapes=True,
    per_image_merges=False, exports=True, marker='x',
    config=MergeNothingConfig)
