"""The one interface between the backbone and a token reducer.

The backbone calls, per forward pass, :meth:`TokenReducer.start` once after
the embedding, :meth:`TokenReducer.run_block` in place of every block (or,
while :attr:`~TokenReducer.bypass` is set, :meth:`TokenReducer.dense_block`:
the backbone routes the blocks by ``bypass``, a reducer need not read it)
and :meth:`TokenReducer.full_grid` where it needs one token per original
position (an ``out_indices`` output). The blocks it hands over follow
:class:`Block`. Export, visualisation, FLOPs tables, checkpoint loading and
benchmarks ask the reducer what it does instead of probing attributes:
its method's description (:attr:`spec`, :mod:`.registry`), which blocks it
touches (:meth:`blocks`, :meth:`merging_blocks`), how many tokens each
block runs on (:meth:`tokens_per_block`), what its merges cost
(:meth:`merge_flops`), the two flags (:attr:`fixed_shapes`: the same token
counts for every image; :attr:`per_image_merges`: which tokens merge
depends on the image), its static structures if it has any (:attr:`units`,
:meth:`structures`, :meth:`set_structures`), the name its weights have in
checkpoints (:attr:`state_dict_name`), and, opted in with
``trace_source = True``, which current token holds each original position
after every block (:attr:`sources`, like ToMe's ``trace_source``), with
``trace_counts = True`` how many tokens each image kept in every block
(:attr:`last_counts`).

Implementations: :class:`mmseg_pm.compression.merge.PruneAndMerge`,
:class:`mmseg_pm.compression.mstm.MSTM`,
:class:`mmseg_pm.compression.tome.ToMe`,
:class:`mmseg_pm.compression.hourglass.Hourglass`,
:class:`mmseg_pm.compression.algm.ALGM`,
:class:`mmseg_pm.compression.mpm.MPM`; every registered method
(:func:`mmseg_pm.compression.registry.method_names`); ToMe, MSTM, ALGM
and MPM carry a source map and take their full grid from
:class:`SourceMapReducer`. A new method
implements this mixin on an ``nn.Module`` and declares its config class
and its :class:`~.registry.MethodSpec` next to it in one module, which
registers the spec and which the package's ``__init__`` imports.
"""
from __future__ import annotations

from typing import (Any, Dict, List, Optional, Protocol, Sequence, Tuple,
                    runtime_checkable)

import torch
from torch import Tensor

from .ops import gather_tokens
from .registry import MethodSpec, method_spec, method_specs

# The names the backbone registers a reducer under (its state_dict_name),
# so its weights and buffers are '<name>.*' in checkpoints. Checkpoints
# written so far use these two: keep them.
STRUCTURES_NAME = 'token_compressors'  # static structures, one per unit
MERGER_NAME = 'token_merger'  # reducers that merge each image its own way


def methods_with_structures() -> str:
    """The registered methods that have static structures, as a
    ``method=`` choice in words (for refusals)."""
    return ' or '.join(f'method={s.name!r}' for s in method_specs()
                       if s.structures)


@runtime_checkable
class Block(Protocol):
    """What a reducer may call on a block (the backbone's TransformerBlock):
    the whole block, or its two residual halves, for a reducer that changes
    the tokens between attention and MLP (ToMe, MSTM, ALGM)."""

    def __call__(self, x: Tensor) -> Tensor:
        """``mlp_residual(attention_residual(x)[0])``."""

    def attention_residual(self, x: Tensor, attn_bias: Optional[Tensor] = None
                           ) -> Tuple[Tensor, Tensor, Tensor]:
        """``x + attn(ln1(x))`` (``attn_bias`` added to the attention
        logits), the attention's queries and its keys ((B, heads, T, d))."""

    def mlp_residual(self, x: Tensor) -> Tensor:
        """``x + ffn(ln2(x))``."""


class TokenReducer:
    """Mixin for an ``nn.Module`` that reduces the tokens of some blocks.

    ``method``: its registered name (:attr:`spec` is its description).
    ``bypass``: while True, the backbone runs every block on all tokens
    through :meth:`dense_block` (the scoring pass needs the dense model's
    attention; ``PMVisionTransformer.dense_forward`` sets it).
    """

    method: str = ''
    state_dict_name: str = MERGER_NAME
    bypass: bool = False
    trace_source: bool = False
    trace_counts: bool = False
    # (first, last) blocks of each unit with a static structure
    units: Sequence[Tuple[int, int]] = ()

    # ------------------------------------------------------------ the method
    @property
    def spec(self) -> MethodSpec:
        """Its method's description (name, label, knob, flags)."""
        return method_spec(self.method)

    @property
    def fixed_shapes(self) -> bool:
        """Whether every image keeps the same token count in every block
        (batches stay rectangular; an ONNX graph can hold it)."""
        return self.spec.fixed_shapes

    @property
    def per_image_merges(self) -> bool:
        """Whether which tokens merge depends on the image (drawing the
        merges needs the image)."""
        return any(self.image_dependent(b) for b in self.merging_blocks())

    def image_dependent(self, block: int) -> bool:
        """The answer of :attr:`per_image_merges` for the merge at ``block``
        (Prune and Merge answers per unit; read :attr:`per_image_merges`)."""
        return self.spec.per_image_merges

    # ------------------------------------------------------------ forward
    def start(self, x: Tensor, hw: Tuple[int, int]) -> Any:
        """State for one forward pass of the (B, T0, C) embedded tokens."""
        raise NotImplementedError

    def run_block(self, i: int, block: Block, x: Tensor,
                  state: Any) -> Tuple[Tensor, Any]:
        """Block ``i`` on the current tokens; returns them and the state."""
        raise NotImplementedError

    def dense_block(self, i: int, block: Block, x: Tensor,
                    state: Any) -> Tuple[Tensor, Any]:
        """Block ``i`` on all tokens (while :attr:`bypass`): only what is
        part of the model rather than a merge still runs (MSTM's coarse
        branch); the backbone takes the tokens as the full grid."""
        return block(x), state

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
        ``num_tokens`` input tokens: a function of its arguments only. For
        a method without :attr:`fixed_shapes` the most each block can run
        on: without an image nothing is known to be merged, so
        ``num_tokens`` everywhere (what images really kept is measured,
        e.g. ALGM's and MPM's :attr:`last_counts`)."""
        if not self.fixed_shapes:
            return [num_tokens] * num_layers
        raise NotImplementedError

    def merge_flops(self, grid: Tuple[int, int], embed_dims: int,
                    out_indices: Sequence[int]) -> Optional[int]:
        """FLOPs of the merges and reconstructions of one image on a
        ``grid`` of patch tokens, as :func:`mmseg_pm.utils.flops.count_flops`
        counts them, with outputs after the blocks ``out_indices``; None
        where there is no formula (the merges depend on the image)."""
        return None

    # ------------------------------------------------------------ structures
    def structures(self) -> list:
        """The static structure of every unit of :attr:`units`, in block
        order (none for a reducer that merges each image its own way)."""
        return []

    def set_structures(self, structures: Sequence) -> None:
        """Install one structure per unit (in block order)."""
        raise ValueError(
            f'compression method={self.method!r} has no static structures '
            '(it merges each image its own way); set_structures applies '
            f'to {methods_with_structures()}')

    # ------------------------------------------------------------ tracing
    @property
    def sources(self) -> Dict[int, Tensor]:
        """Block -> (B, T0) current token of every original token, recorded
        by the last forward pass while ``trace_source`` is True."""
        return self.__dict__.setdefault('_sources', {})

    def record_source(self, i: int, source: Tensor) -> None:
        if self.trace_source:
            self.sources[i] = source.detach()

    @property
    def counts(self) -> Dict[int, Tensor]:
        """Block -> (B,) tokens every image kept in it (prefix tokens
        included), recorded by the last forward pass while
        ``trace_counts`` is True: what a padded batch really ran on."""
        return self.__dict__.setdefault('_counts', {})

    @property
    def last_counts(self) -> Optional[Tensor]:
        """(B, blocks) the :attr:`counts` in block order, None before a
        traced forward pass."""
        counts = self.counts
        return torch.stack([counts[i] for i in sorted(counts)], dim=1) \
            if counts else None

    def record_counts(self, i: int, x: Tensor,
                      valid: Optional[Tensor]) -> None:
        """Record block ``i``'s tokens ``x`` (B, T, C) per image
        (``valid`` (B, T) False at padding; None: none), only while
        ``trace_counts`` is set (a count per block would put a graph break
        into every compiled forward)."""
        if self.trace_counts:
            self.counts[i] = (torch.full(x.shape[:1], x.shape[1],
                                         device=x.device)
                              if valid is None else valid.sum(dim=1)).detach()


class SourceMapReducer(TokenReducer):
    """A reducer whose state carries the source map (``state.source``,
    (B, T0): the current token of every original one): its full grid is
    one gather (ToMe, MSTM, ALGM, MPM)."""

    def full_grid(self, i: int, x: Tensor, state: Any) -> Tensor:
        """(B, T, C) current tokens -> (B, T0, C), one per original token."""
        return gather_tokens(x, state.source)
