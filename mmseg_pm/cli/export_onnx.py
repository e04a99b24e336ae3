"""Export a (compressed) segmentor to ONNX at a fixed input size.

The graph is the segmentor's ``mode='tensor'`` forward: normalised
(B, 3, H, W) images in (the config's data preprocessor: mean/std and
BGR->RGB are *not* included), decoder logits out. ``--check`` runs the file
with onnxruntime on CPU and prints the largest difference to PyTorch.

Example::

    python tools/export_onnx.py \\
        configs/synthetic/pm-segmenter_vit-tiny_mask_synthetic-ade-64x64.py \\
        work_dirs/pm_tiny/pruned.pth --out work_dirs/pm_tiny/model.onnx --check

Which methods export is part of each method's description
(``MethodSpec.exports``; Prune and Merge's structure is a constant of the
graph); a method whose token counts depend on the image is refused, and a
failed export says why its method does not export; see
docs/weights_export_visualize.md.
"""
import argparse
import time


import mmseg_pm.models  # noqa: F401  (registers modules, the mmseg:: scope)
import torch

from mmseg_pm.apis import init_segmentor
from mmseg_pm.cli import CfgOptionsAction, int_at_least
from mmseg_pm.export import (DEFAULT_OPSET, MIN_OPSET, check_opset,
                             compression_method, export_failure, export_hint,
                             export_onnx, onnx_parity, parity_inputs)
from mmseg_pm.utils.errors import UsageError
from mmseg_pm.utils.outputs import check_output_file

PARITY_TOLERANCE = 1e-4


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Export a segmentor to ONNX (fixed input size)')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', required=True, help='ONNX file to write')
    parser.add_argument('--shape', type=int_at_least(1), nargs=2,
                        metavar=('H', 'W'),
                        help='input size (default: the backbone img_size, '
                        'the size compression structures are built for)')
    parser.add_argument('--batch-size', type=int_at_least(1), default=1)
    parser.add_argument('--opset', type=int_at_least(1),
                        default=DEFAULT_OPSET,
                        help=f'ONNX opset, {MIN_OPSET} or newer (default '
                        f'{DEFAULT_OPSET})')
    parser.add_argument('--upsample', action='store_true',
                        help='resize the logits to the input size inside the '
                        'graph (default: the decoder resolution)')
    parser.add_argument('--check', action='store_true',
                        help='compare onnxruntime CPU outputs with PyTorch')
    parser.add_argument('--force', action='store_true',
                        help='overwrite an existing --out')
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction,
                        help='override config entries')
    return parser.parse_args(argv)


def input_shape(model, shape):
    """--shape (at least one patch), else the backbone's img_size."""
    backbone = getattr(model, 'backbone', None)
    if shape:
        patch = getattr(backbone, 'patch_size', 1)
        patch = patch if isinstance(patch, int) else max(patch)
        if min(shape) < patch:
            raise SystemExit(f'error: --shape {shape[0]} {shape[1]} is '
                             f'smaller than one {patch}x{patch} patch')
        return tuple(shape)
    size = getattr(backbone, 'img_size', None)
    if size is None:
        raise SystemExit('error: pass --shape H W (the backbone has no '
                         'img_size)')
    return tuple(int(s) for s in size)


def check_takes_shape(model, shape) -> None:
    """The model runs on a (1, 3, H, W) input of ``shape`` (a refusal is
    named before the exporter buries it in its own errors)."""
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, *shape), mode='tensor')
    except UsageError as err:
        why = str(err).split('; ')[0]  # the model's advice is for inference
        size = getattr(getattr(model, 'backbone', None), 'img_size', None)
        fix = f' (its img_size: --shape {size[0]} {size[1]})' if size else ''
        raise SystemExit(f'error: --shape {shape[0]} {shape[1]}: the model '
                         f'cannot run on this input: {why}; export at a size '
                         f'it takes{fix}')


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        check_opset(args.opset)
        out = check_output_file(args.out, dict(config=args.config,
                                               checkpoint=args.checkpoint),
                                args.force, kind='onnx')
        model = init_segmentor(args.config, args.checkpoint,
                               args.cfg_options)
    except UsageError as err:
        raise SystemExit(f'error: {err}')
    shape = input_shape(model, args.shape)
    check_takes_shape(model, shape)
    method = compression_method(model)
    start = time.perf_counter()
    try:
        export_onnx(model, out, shape, args.batch_size, args.opset,
                    args.upsample, replace=args.force)
    except UsageError as err:  # the output, a method that cannot export
        raise SystemExit(f'error: {err}')
    except Exception as err:  # the exporter's errors have many types
        raise SystemExit(f'error: ONNX export of the {method} model failed: '
                         f'{export_failure(err)}{export_hint(model)}')
    print(f'exported {method} model for {args.batch_size}x3x{shape[0]}x'
          f'{shape[1]} inputs to {out} '
          f'({time.perf_counter() - start:.1f} s)')
    report = dict(out=str(out), shape=shape, method=method)
    if args.check:
        inputs = parity_inputs(shape, args.batch_size)
        diff = onnx_parity(model, out, inputs, args.upsample)
        verdict = 'OK' if diff <= PARITY_TOLERANCE else 'MISMATCH'
        print(f'onnxruntime vs PyTorch: max abs diff {diff:.3g} over '
              f'{len(inputs)} inputs ({verdict}, tolerance '
              f'{PARITY_TOLERANCE:g})')
        report['max_abs_diff'] = diff
        if diff > PARITY_TOLERANCE:
            raise SystemExit(f'error: {out} does not reproduce PyTorch '
                             f'(max abs diff {diff:.3g})')
    return report


if __name__ == '__main__':
    with torch.no_grad():
        main()
