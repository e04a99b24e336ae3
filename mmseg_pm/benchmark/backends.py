"""The same modules under other runtimes: exported to ONNX and run by
onnxruntime (CPU execution provider), and ``torch.compile`` (Inductor).

ONNX models are exported once per module with a free batch dimension (the
image size is fixed: Prune-and-Merge structures are built for one grid) and
run with the thread count torch uses. Compiled modules are static-shape
(``dynamic=False``): one graph per batch size, compiled by its first call
with an empty Inductor cache, whose time is reported apart from the steady
state.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor, nn

from mmseg_pm.export import export_failure, export_module

EAGER, ONNX, COMPILE = 'eager', 'onnxruntime', 'torch.compile'
# torch.compile(mode='reduce-overhead'): the compiled graph captured in a
# CUDA graph and replayed (one launch per forward; CUDA devices only)
CUDA_GRAPH = 'CUDA graph'
BACKENDS = {'eager': EAGER, 'onnx': ONNX, 'compile': COMPILE,
            'cudagraph': CUDA_GRAPH}
# torch.compile's mode of each compiled backend
COMPILE_MODES = {COMPILE: None, CUDA_GRAPH: 'reduce-overhead'}
# graphs per compiled function before dynamo gives up and runs eager: one
# per (row, batch size) share the backbone's forward code
RECOMPILE_LIMIT = 64


def try_export(module: nn.Module, example: Tensor, path: Path
               ) -> Tuple[Optional[Path], float, Optional[dict]]:
    """Export ``module`` with a free batch dimension. Returns (file or None,
    seconds, None or the failure: exception class and the exporter's
    informative line)."""
    start = time.perf_counter()
    try:
        out = export_module(module.eval(), example, path,
                            dynamic_batch=True)
    except Exception as err:  # the exporter's errors have many types
        return None, time.perf_counter() - start, dict(
            error=type(err).__name__, reason=export_failure(err))
    return out, time.perf_counter() - start, None


def onnx_session(path: Path, threads: int):
    """An onnxruntime CPU session using ``threads`` intra-op threads (as
    torch does) and no inter-op parallelism (torch has none either).

    Its threads do not spin-wait between runs: spinning threads took the
    cores from the PyTorch rows timed in between (measured: ViT-S backbone
    at 128x128, 2 threads, 123 ms alone, 1303 ms interleaved with a
    spinning session, 123 ms with a non-spinning one).
    """
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = \
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options,
                                providers=['CPUExecutionProvider'])


def onnx_step(session, x: Tensor) -> Callable[[], object]:
    """One run of ``session`` on ``x`` (converted once, outside timing)."""
    name = session.get_inputs()[0].name
    feed = {name: x.detach().cpu().numpy()}

    def step():
        return session.run(None, feed)
    return step


def max_abs_diff(torch_out, onnx_out) -> float:
    """Largest |PyTorch - onnxruntime| over every output."""
    if isinstance(torch_out, Tensor):
        torch_out = [torch_out]
    return max(float(abs(t.float().cpu().numpy() - o).max())
               for t, o in zip(torch_out, onnx_out))


def compile_module(module: nn.Module, mode: Optional[str] = None
                   ) -> nn.Module:
    """``torch.compile`` with static shapes (a recompile per new shape, none
    for new data of a shape seen) in ``mode`` (None: Inductor's default;
    'reduce-overhead': replayed as a CUDA graph)."""
    import torch._dynamo
    limit = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = max(limit, RECOMPILE_LIMIT)
    return torch.compile(module, dynamic=False, mode=mode)


def compiled_graphs() -> int:
    """Graphs dynamo has compiled so far in this process."""
    from torch._dynamo.utils import counters
    return int(counters['stats']['unique_graphs'])


def cold_cache():
    """A fresh, empty Inductor cache (so compile times do not depend on
    what earlier runs left on disk); a no-op where torch lacks it."""
    try:
        from torch._inductor.utils import fresh_cache
    except ImportError:  # private API: older or newer torch
        return contextlib.nullcontext()
    return fresh_cache()


def first_calls(step: Callable[[], object], again: Callable[[], object],
                device: str) -> dict:
    """Compile cost of a compiled step: the first call's seconds (with a
    cold Inductor cache) and the graphs it compiled, then the graphs
    compiled by a call on other data of the same shape (``again``; 0 for a
    static structure)."""
    from mmseg_pm.apis.timing import synchronize
    before = compiled_graphs()
    with cold_cache():
        start = time.perf_counter()
        step()
        synchronize(device)
        seconds = time.perf_counter() - start
    compiled = compiled_graphs() - before
    again()
    synchronize(device)
    return dict(first_call_s=seconds, graphs=compiled,
                recompiles_same_shape=compiled_graphs() - before - compiled)
