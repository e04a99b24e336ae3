"""Command line of ``tools/benchmark.py``: measure models side by side.

For every config (``CONFIG[:CHECKPOINT]``) it builds mmseg's dense
Segmenter, this project's backbone with compression off, and the
compressed backbone with the sparse and the dense-matrix merge at each keep
rate, all with the same weights; then counts FLOPs and parameters, times
them interleaved at each batch size, measures peak memory of an inference
and a training step, and writes a table, JSON, markdown and a plot.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from .measure import (DTYPES, PARTS, analytic_backbone_flops, counted_flops,
                      inference_step, parameter_count, part_module,
                      peak_memory_bytes, summarise, time_interleaved,
                      tokens_per_layer, train_step)
from mmseg_pm.apis import UsageError, check_output_file
from mmseg_pm.cli import float_in, int_at_least

from .report import (add_ratios, check_targets, machine_info, render_text,
                     result_paths, write_results)
from .variants import (VARIANTS, ModelSpec, build_family, config_stem,
                       expand_specs, parse_config_arg)


def build_parser() -> argparse.ArgumentParser:
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(
        description='GFLOPs, parameters, images/s, latency and peak memory '
        'of dense and compressed Segmenters, side by side',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('configs', nargs='+', metavar='CONFIG[:CHECKPOINT]',
                   help='mmseg configs (paths or mmseg::...), each with an '
                   'optional checkpoint whose weights every row of it uses')
    p.add_argument('--variants', nargs='+', choices=VARIANTS,
                   default=['mmseg', 'off', 'sparse', 'dense'],
                   help="rows per config: mmseg's VisionTransformer, ours "
                   'with compression off, compressed with the sparse / '
                   "dense-matrix merge, the config's backbone as written")
    p.add_argument('--keep-rates', nargs='+', default=None,
                   type=float_in(0, 1, low_open=True),
                   help="keep rates of the compressed rows (default: the "
                   "config's own, or 0.7 0.5); 1.0 = the dense rows")
    p.add_argument('--parts', nargs='+', choices=PARTS, default=list(PARTS),
                   help='time the backbone alone and/or the segmentor '
                   "(backbone + decode head, mode='tensor')")
    p.add_argument('--batch-sizes', nargs='+', type=int_at_least(1),
                   default=[1, 8])
    p.add_argument('--device', default='cpu', help="'cpu' or 'cuda[:i]'")
    p.add_argument('--dtypes', nargs='+', choices=list(DTYPES),
                   default=['fp32'],
                   help='fp32, or autocast to bf16 / fp16 (GPU; bf16 works '
                   'on CPU too)')
    p.add_argument('--threads', type=int_at_least(1), default=None,
                   help='torch intra-op threads (default: torch\'s)')
    p.add_argument('--warmup', type=int_at_least(0), default=2,
                   help='untimed calls per row before timing')
    p.add_argument('--repeats', type=int_at_least(1), default=10,
                   help='timed calls per row (interleaved; median)')
    p.add_argument('--memory', choices=['none', 'inference', 'all'],
                   default='all', help='peak memory of an inference step '
                   'and (all) of a training step (forward + backward)')
    p.add_argument('--memory-batch-size', type=int_at_least(1),
                   default=None,
                   help='batch of the memory steps (default: the largest '
                   'of --batch-sizes)')
    p.add_argument('--resolutions', nargs='*', type=int_at_least(1),
                   default=[],
                   help='also time the backbone (batch 1) at these square '
                   'input sizes, first config only')
    p.add_argument('--scale-variants', nargs='+', choices=VARIANTS,
                   default=['off', 'sparse'],
                   help='rows of the input-size study')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config entries of every config, e.g. '
                   'model.backbone.drop_path_rate=0')
    p.add_argument('--out-dir', default='benchmarks',
                   help='where results are written')
    p.add_argument('--name', default=None,
                   help='result file name (default: first config + device)')
    p.add_argument('--no-plot', action='store_true')
    p.add_argument('--force', action='store_true',
                   help='overwrite result files of the same --name')
    return p


def log(*msg) -> None:
    print(*msg, file=sys.stderr, flush=True)


def check_args(args) -> None:
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise UsageError(f'--device {args.device}: no CUDA device here; use '
                         '--device cpu')
    if not args.device.startswith(('cpu', 'cuda')):
        raise UsageError(f"--device must be 'cpu' or 'cuda[:i]', got "
                         f'{args.device!r}')
    if args.device == 'cpu' and 'fp16' in args.dtypes:
        log('note: fp16 autocast on the CPU is slow; bf16 is the CPU\'s '
            'half precision')
    inputs = {}
    for i, arg in enumerate(args.configs):
        config, checkpoint = parse_config_arg(arg)
        inputs.update({f'config {i + 1}': config,
                       f'checkpoint {i + 1}': checkpoint})
    for path in result_paths(Path(args.out_dir),
                             args.name or default_name(args),
                             plot=not args.no_plot).values():
        check_output_file(path, inputs, args.force, flag='--out-dir/--name')


def image_size(segmentor) -> tuple:
    size = segmentor.backbone.img_size
    return (size, size) if isinstance(size, int) else tuple(size)


def base_row(spec: ModelSpec, config_arg: str, part: str, dtype: str,
             segmentor, module, flops: int, hw) -> dict:
    backbone = segmentor.backbone
    patch = backbone.patch_embed.projection.kernel_size[0]
    grid = (-(-hw[0] // patch), -(-hw[1] // patch))
    return dict(model=spec.model_name, config=spec.config,
                config_arg=config_arg, checkpoint=spec.checkpoint,
                variant=spec.variant, label=spec.label,
                keep_rate=spec.keep_rate, impl=spec.impl, part=part,
                dtype=dtype, img_size=spec.img_size,
                input_hw=list(hw), params=parameter_count(module),
                gflops=flops / 1e9,
                tokens_per_layer=tokens_per_layer(backbone, grid),
                timing={}, memory=None)


def measure_family(config_arg: str, specs: Sequence[ModelSpec], args,
                   cfg_options, parts, batch_sizes, dtypes,
                   memory: str) -> List[dict]:
    """Rows of one family of models (same config and weights)."""
    device = args.device
    log(f'building {len(specs)} models of {config_stem(specs[0].config)}'
        + (f' at {specs[0].img_size}' if specs[0].img_size else ''))
    segmentors = [m.to(device) for m in build_family(specs, cfg_options)]
    hw = image_size(segmentors[0])
    rows = []
    for part in parts:
        modules = [part_module(m, part) for m in segmentors]
        one = torch.randn(1, 3, *hw, device=device)
        flops, deviation = [], []
        for seg, module in zip(segmentors, modules):
            counted = counted_flops(module, one)
            backbone = counted if part == 'backbone' else \
                counted_flops(seg.backbone, one)
            analytic = analytic_backbone_flops(seg.backbone, hw)
            flops.append(counted)
            deviation.append((backbone, analytic))
        for dtype in dtypes:
            part_rows = []
            for spec, seg, module, f, (backbone, analytic) in zip(
                    specs, segmentors, modules, flops, deviation):
                row = base_row(spec, config_arg, part, dtype, seg, module, f,
                               hw)
                row['backbone_gflops'] = backbone / 1e9
                row['backbone_gflops_analytic'] = None if analytic is None \
                    else analytic / 1e9
                row['backbone_flops_deviation_pct'] = None \
                    if analytic is None else 100 * (backbone / analytic - 1)
                part_rows.append(row)
            for batch in batch_sizes:
                log(f'  timing {part} {dtype} batch {batch}: '
                    f'{len(modules)} rows x {args.repeats} repeats')
                x = torch.randn(batch, 3, *hw, device=device)
                calls = {i: inference_step(m, x, device, dtype)
                         for i, m in enumerate(modules)}
                times = time_interleaved(calls, args.warmup, args.repeats,
                                         device)
                for i, row in enumerate(part_rows):
                    row['timing'][batch] = summarise(times[i], batch)
            if memory != 'none':
                batch = args.memory_batch_size or max(batch_sizes)
                log(f'  peak memory {part} {dtype} batch {batch}')
                x = torch.randn(batch, 3, *hw, device=device)
                for module, row in zip(modules, part_rows):
                    row['memory'] = dict(batch=batch)
                    row['memory']['inference'] = peak_memory_bytes(
                        inference_step(module, x, device, dtype), device)
                    if memory == 'all':
                        row['memory']['train'] = peak_memory_bytes(
                            train_step(module, x, device, dtype), device)
            rows += part_rows
    del segmentors
    gc.collect()
    return rows


def run(args) -> dict:
    check_args(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg_options = args.cfg_options or {}
    results = dict(machine=machine_info(args.device), rows=[], scale=[],
                   notes=[])
    results['settings'] = dict(
        configs=list(args.configs), variants=list(args.variants),
        keep_rates=args.keep_rates, parts=list(args.parts),
        batch_sizes=list(args.batch_sizes), dtypes=list(args.dtypes),
        warmup=args.warmup, repeats=args.repeats, memory=args.memory,
        memory_batch=None if args.memory == 'none' else
        (args.memory_batch_size or max(args.batch_sizes)),
        resolutions=list(args.resolutions), cfg_options=cfg_options)
    for config_arg in args.configs:
        config, checkpoint = parse_config_arg(config_arg)
        specs, notes = expand_specs(config, checkpoint, args.variants,
                                    args.keep_rates, cfg_options)
        results['notes'] += notes
        if specs:
            results['rows'] += measure_family(
                config_arg, specs, args, cfg_options, args.parts,
                args.batch_sizes, args.dtypes, args.memory)
    if args.resolutions:
        config, checkpoint = parse_config_arg(args.configs[0])
        for size in args.resolutions:
            specs, _ = expand_specs(config, checkpoint, args.scale_variants,
                                    args.keep_rates, cfg_options)
            specs = [ModelSpec(s.config, s.variant, s.checkpoint, s.keep_rate,
                               (size, size)) for s in specs]
            results['scale'] += measure_family(
                args.configs[0], specs, args, cfg_options, ['backbone'], [1],
                ['fp32'], 'none')
        results['notes'].append(
            'input-size study: weights as in the table except pos_embed '
            '(resized models keep their own), structures on the lattice of '
            'each grid')
    add_ratios(results['rows'])
    add_ratios(results['scale'])
    results['checks'] = check_targets(results['rows'])
    results['load_average_end'] = [round(v, 2) for v in os.getloadavg()]
    return results


def default_name(args) -> str:
    config, _ = parse_config_arg(args.configs[0])
    device = args.device.replace(':', '')
    return f'{config_stem(config)}_{device}'


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        results = run(args)
    except UsageError as err:
        parser.error(str(err))
    print(render_text(results))
    paths = write_results(results, Path(args.out_dir),
                          args.name or default_name(args),
                          plot=not args.no_plot)
    print('\nwrote ' + ', '.join(str(p) for p in paths.values()))
    return results
