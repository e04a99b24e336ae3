"""Aten ops per forward: what sets the speed where every op costs a kernel
launch (a GPU at small batch, a small model on a CPU).

:class:`OpCounter` is a ``TorchDispatchMode`` that counts every aten op that
reaches the kernels below autograd, by name. Views (an op whose schema
returns an alias of an input: ``view``, ``expand``, ``transpose``,
``slice``, ``select``, ...) and the metadata-only ops in
:data:`METADATA_OPS` change no data and launch no kernel; every other op
launches about one (:attr:`OpCounter.launches`). The ops in
:data:`HOST_SYNC_OPS` make the host wait for the device (a value read on
the host, or an output whose shape depends on the data): a forward with
any of them cannot be captured in a CUDA graph (:attr:`OpCounter.syncs`).
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, Dict, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# ops that touch no data although their schema does not alias an input
METADATA_OPS = frozenset({'_unsafe_view', 'lift_fresh', 'empty',
                          'empty_strided', 'sym_size', 'sym_stride',
                          'sym_numel', 'sym_storage_offset', 'is_same_size'})
# ops that read device data on the host: .item(), .tolist() and bool() of a
# tensor (_local_scalar_dense), and outputs sized by the data
HOST_SYNC_OPS = frozenset({'_local_scalar_dense', 'nonzero', 'masked_select',
                           '_unique2', 'unique_dim', 'unique_consecutive',
                           'repeat_interleave', 'bincount', 'histc',
                           'masked_scatter', 'equal', 'is_nonzero'})


def launches_kernel(op: torch._ops.OpOverload) -> bool:
    """Whether ``op`` computes or writes data (a view does not)."""
    return not op.is_view and op.overloadpacket.__name__ not in METADATA_OPS


class OpCounter(TorchDispatchMode):
    """Counts the aten ops run inside ``with OpCounter() as ops:``."""

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()
        self.kernels: Counter = Counter()
        self.syncs: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts[name] += 1
        if launches_kernel(func):
            self.kernels[name] += 1
        if name in HOST_SYNC_OPS:
            self.syncs[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def launches(self) -> int:
        return sum(self.kernels.values())


def count_ops(call: Callable[[], object]) -> OpCounter:
    """The ops of one ``call()`` under ``torch.no_grad``."""
    with torch.no_grad(), OpCounter() as counter:
        call()
    return counter


def forward_ops(step: Callable[[], object]) -> Dict[str, object]:
    """:func:`summary` of one ``step`` (a forward) under ``no_grad``, after
    a first call (which plans what a model keeps per input shape). Not
    under ``inference_mode``: there the dispatcher hands over ops before
    their decomposition (``linear``, ``dropout``), not the kernels run."""
    with torch.no_grad():
        step()
    return summary(count_ops(step))


def top_ops(counter: OpCounter, n: int = 8) -> Tuple[Tuple[str, int], ...]:
    """The ``n`` most frequent ops that launch a kernel."""
    return tuple(counter.kernels.most_common(n))


def summary(counter: OpCounter) -> Dict[str, object]:
    """The counts a benchmark row keeps: all ops, the ones that launch a
    kernel, the host synchronisations and the most frequent launches."""
    return dict(ops=counter.total, launches=counter.launches,
                syncs=sum(counter.syncs.values()),
                top=dict(top_ops(counter)))
