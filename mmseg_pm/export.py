"""ONNX export of a segmentor at a fixed input size, and a parity check
against onnxruntime.

The exported graph is the segmentor's ``mode='tensor'`` forward: normalised
(B, 3, H, W) images in, decoder logits out (at the decoder's resolution, or
at the input's with ``upsample=True``). The data preprocessor (mean/std,
BGR->RGB, padding) is not part of it.

torch's TorchScript exporter refuses the segment sum of the sparse merge
(``index_add`` with repeated indices), so export goes through
``torch.export`` (``dynamo=True``, needs onnxscript), which lowers it to a
ScatterND with add-reduction. A Prune-and-Merge structure is a constant of
the graph: its shapes and indices are fixed, nothing depends on the image.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmseg_pm.compression.reducer import TokenReducer
from mmseg_pm.compression.registry import method_specs
from mmseg_pm.utils.errors import UsageError
from mmseg_pm.utils.outputs import atomic_output

DEFAULT_OPSET = 18
# torch.export's exporter writes opset 18 and converts up to torch's newest;
# older opsets would need the TorchScript exporter, which refuses the merge
MIN_OPSET = 18


def max_opset() -> int:
    from torch.onnx import _constants
    return int(getattr(_constants, 'ONNX_MAX_OPSET', DEFAULT_OPSET))


def check_opset(opset: int) -> int:
    """An opset the exporter honours (it would otherwise write another one
    and say nothing)."""
    if not MIN_OPSET <= opset <= max_opset():
        raise UsageError(
            f'--opset {opset}: the exporter (torch.export, which the sparse '
            f'merge needs) writes opsets {MIN_OPSET}..{max_opset()} with '
            f'torch {torch.__version__}; pick one of them')
    return opset


# protobuf's limit: larger models keep their weights in a side file
SINGLE_FILE_LIMIT = 1_800_000_000


class TensorForward(nn.Module):
    """``segmentor(x, mode='tensor')`` as a plain module (what is exported);
    ``upsample`` resizes the logits to the input size as mmseg's inference
    does."""

    def __init__(self, segmentor: nn.Module, upsample: bool = False):
        super().__init__()
        self.segmentor = segmentor
        self.upsample = upsample

    def forward(self, inputs: Tensor) -> Tensor:
        logits = self.segmentor(inputs, mode='tensor')
        if self.upsample:
            head = getattr(self.segmentor, 'decode_head', None)
            logits = F.interpolate(
                logits, size=inputs.shape[-2:], mode='bilinear',
                align_corners=getattr(head, 'align_corners', False))
        return logits


def compression_method(segmentor: nn.Module) -> str:
    """What the backbone compresses with: a registered method's name, or
    'dense'."""
    reducer = model_reducer(segmentor)
    return 'dense' if reducer is None else reducer.method


def model_reducer(segmentor: nn.Module) -> Optional[TokenReducer]:
    """The backbone's token reducer (None: dense, or not our backbone)."""
    backbone = getattr(segmentor, 'backbone', segmentor)
    return getattr(backbone, 'reducer', None)


def _param_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size()
               for t in list(module.parameters()) + list(module.buffers()))


def export_onnx(segmentor: nn.Module,
                out: str,
                shape: Tuple[int, int],
                batch_size: int = 1,
                opset: int = DEFAULT_OPSET,
                upsample: bool = False,
                replace: bool = True) -> Path:
    """Export ``segmentor`` (eval mode) for ``(batch_size, 3, *shape)``
    inputs to ``out``, atomically (the output rule of
    :mod:`mmseg_pm.utils.outputs`): nothing appears under ``out`` unless the
    export completes (``replace=False``: nor if another run wrote it
    meanwhile)."""
    module = TensorForward(segmentor, upsample).eval()
    return export_module(module, torch.zeros(batch_size, 3, *shape), out,
                         opset, output_names=['logits'], replace=replace)


def check_fixed_shapes(module: nn.Module) -> None:
    """Refuse a model whose token counts depend on the image (a method
    without ``fixed_shapes``): an ONNX graph has one shape per tensor."""
    for m in module.modules():
        if isinstance(m, TokenReducer) and not m.fixed_shapes:
            exporting = ', '.join(s.name for s in method_specs()
                                  if s.exports)
            raise UsageError(
                f'compression method={m.method!r} cannot be exported to '
                f'ONNX: {m.spec.no_export}; export the dense model or a '
                f'method that exports ({exporting}), or run it in PyTorch')


def export_hint(segmentor: nn.Module) -> str:
    """Why the model's method may fail to export ('' if it exports)."""
    reducer = model_reducer(segmentor)
    if reducer is None or reducer.spec.exports:
        return ''
    return f' ({reducer.spec.label}: {reducer.spec.no_export})'


def export_module(module: nn.Module,
                  example: Tensor,
                  out: str,
                  opset: int = DEFAULT_OPSET,
                  dynamic_batch: bool = False,
                  output_names: Optional[Sequence[str]] = None,
                  replace: bool = True) -> Path:
    """Export ``module(example)`` (one image tensor in) to ``out``,
    atomically (see :func:`export_onnx`); ``dynamic_batch`` leaves the batch
    dimension free (everything else keeps ``example``'s shape)."""
    check_opset(opset)
    check_fixed_shapes(module)
    out = Path(out)
    external = _param_bytes(module) > SINGLE_FILE_LIMIT
    dynamic = None
    if dynamic_batch:
        from torch.export import Dim
        dynamic = {'inputs': {0: Dim('batch', min=1, max=1024)}}
    with atomic_output(out, replace) as final_tmp:
        # the exporter names a weights side file after the model file, so
        # it writes under the final name inside a temporary folder
        tmp_dir = Path(tempfile.mkdtemp(prefix=f'.{out.name}.',
                                        dir=out.parent))
        try:
            tmp = tmp_dir / out.name
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter('ignore')
                program = torch.onnx.export(
                    module, (example, ), dynamo=True, opset_version=opset,
                    input_names=['inputs'], output_names=output_names,
                    dynamic_shapes=dynamic, external_data=external,
                    verbose=False)
                program.save(str(tmp), external_data=external)
            data = [p for p in tmp_dir.iterdir() if p != tmp]
            for p in data:  # weights first: the model never points at nothing
                os.replace(p, out.parent / p.name)
            os.replace(tmp, final_tmp)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return out


def export_failure(err: BaseException) -> str:
    """The informative line of an exporter error (they run to pages)."""
    chain = []
    while err is not None and len(chain) < 10:
        chain.append(err)
        err = err.__cause__ or err.__context__
    for e in reversed(chain):
        for line in str(e).splitlines():
            if 'No ONNX function found' in line or 'not supported' in line:
                return line.strip()[:300]
    return f'{type(chain[-1]).__name__}: ' + \
        (str(chain[-1]).strip().splitlines() or [''])[0][:300]


def onnx_parity(segmentor: nn.Module,
                onnx_file: str,
                inputs: Sequence[Tensor],
                upsample: bool = False) -> float:
    """Max |onnxruntime (CPU) - PyTorch| over the logits of ``inputs``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file),
                                   providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    module = TensorForward(segmentor, upsample).eval()
    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            expected = module(x).numpy()
            (got, ) = session.run(None, {name: x.numpy()})
            if got.shape != expected.shape:
                raise RuntimeError(f'onnxruntime returned {got.shape}, '
                                   f'PyTorch {expected.shape}')
            worst = max(worst, float(abs(got - expected).max()))
    return worst


def parity_inputs(shape: Tuple[int, int], batch_size: int = 1,
                  num: int = 2, seed: int = 0) -> list:
    """Normalised-image-like inputs: ``num`` seeded N(0, 1) batches."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch_size, 3, *shape, generator=g)
            for _ in range(num)]
