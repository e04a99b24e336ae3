"""The one interface between the backbone and a token reducer.

The backbone calls, per forward pass, :meth:`TokenReducer.start` once after
the embedding, :meth:`TokenReducer.run_block` in place of every block and
:meth:`TokenReducer.full_grid` where it needs one token per original
position (an ``out_indices`` output). Export, visualisation, FLOPs tables
and benchmarks ask the reducer what it does instead of probing attributes:
which blocks it touches (:meth:`blocks`, :meth:`merging_blocks`), how many
tokens each block runs on (:meth:`tokens_per_block`), whether its structure
is the same for every input (:attr:`static`: exportable, set by
``set_structures``), and, opted in with ``trace_source = True``, which
current token holds each original position after every block
(:attr:`sources`, like ToMe's ``trace_source``).

Implementations: :class:`mmseg_pm.compression.merge.PruneAndMerge`,
:class:`mmseg_pm.compression.mstm.MSTM`,
:class:`mmseg_pm.compression.tome.ToMe`,
:class:`mmseg_pm.compression.algm.ALGM` (whose token counts differ per
image: its batches are padded, see its module). A new method implements this
mixin on an ``nn.Module`` and adds its config parser
(mmseg_pm/compression/config.py).
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

from torch import Tensor, nn


class TokenReducer:
    """Mixin for an ``nn.Module`` that reduces the tokens of some blocks.

    ``bypass``: while True, every block runs on all tokens (the scoring pass
    needs the dense model's attention; ``PMVisionTransformer.dense_forward``
    sets it).
    """

    method: str = ''
    static: bool = False
    bypass: bool = False
    trace_source: bool = False

    # ------------------------------------------------------------ forward
    def start(self, x: Tensor, hw: Tuple[int, int]) -> Any:
        """State for one forward pass of the (B, T0, C) embedded tokens."""
        raise NotImplementedError

    def run_block(self, i: int, block: nn.Module, x: Tensor,
                  state: Any) -> Tuple[Tensor, Any]:
        """Block ``i`` on the current tokens; returns them and the state."""
        raise NotImplementedError

    def full_grid(self, i: int, x: Tensor, state: Any) -> Tensor:
        """(B, T0, C): one token per original position after block ``i``."""
        raise NotImplementedError

    # ------------------------------------------------------------ questions
    def blocks(self, num_layers: int) -> List[int]:
        """Every block of ``num_layers`` that runs on fewer tokens than
        the input has (merges carry over to later blocks)."""
        raise NotImplementedError

    def merging_blocks(self) -> List[int]:
        """The blocks where the tokens change (a drawing shows these)."""
        raise NotImplementedError

    def tokens_per_block(self, num_tokens: int, num_layers: int) -> List[int]:
        """Tokens each block runs on (its MLP), prefix tokens included, for
        ``num_tokens`` input tokens."""
        raise NotImplementedError

    # ------------------------------------------------------------ tracing
    @property
    def sources(self) -> Dict[int, Tensor]:
        """Block -> (B, T0) current token of every original token, recorded
        by the last forward pass while ``trace_source`` is True."""
        return self.__dict__.setdefault('_sources', {})

    def record_source(self, i: int, source: Tensor) -> None:
        if self.trace_source:
            self.sources[i] = source.detach()
