"""The benchmark's pipeline (its command line: ``mmseg_pm.cli.benchmark``):
measure models side by side.

For every config (``CONFIG[:CHECKPOINT]``) it builds mmseg's dense
Segmenter, this project's backbone with compression off, Prune-and-Merge at
each keep rate (the project default and the authors' reconstruct) and the
peers (every other registered method) calibrated to the same GFLOPs, all
with the same weights; exports the dense and the PM models (and the peers
that export) to ONNX and compiles them; then counts
FLOPs and parameters, times every row interleaved at each batch size
(PyTorch, onnxruntime and compiled rows taking turns), measures peak memory
of an inference and a training step, and writes a table, JSON, markdown
and a plot.

``--scaling`` adds how the gain grows with the model: mmseg's dense
Segmenter, Prune and Merge at keep 0.7 and (below ``--scaling-large-gflops``
dense GFLOPs) the peers at its GFLOPs, for ViT-T/S/B at 512 and ViT-L at
640 (``--scaling-configs``), batch 1, fp32, PyTorch eager, whole segmentor;
models above the threshold get ``--scaling-large-repeats`` timed calls and
no peers (calibrating a peer costs a dozen forward passes).
"""
from __future__ import annotations

import copy
import dataclasses
import gc
import os
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from mmseg_pm.apis.timing import summarise, time_interleaved

from .ops import forward_ops
from .backends import (COMPILE, COMPILE_MODES, CUDA_GRAPH, EAGER, ONNX,
                       compile_module, compiled_graphs,
                       first_calls, max_abs_diff, onnx_session, onnx_step,
                       try_export)
from .measure import (analytic_backbone_flops, counted_flops,
                      inference_step, mean_scene_flops, op_profile,
                      parameter_count, part_module, peak_memory_bytes,
                      scene_images, tokens_per_layer, train_step)
from .peers import calibrate_peers
from .machine import machine_info
from .settings import BenchmarkSettings
from .targets import add_ratios, check_targets
from .variants import (PEER_VARIANTS, REFERENCE, ModelSpec,
                       build_family, build_segmentor, config_stem,
                       expand_specs, family_weights,
                       image_dependent_counts, load_config,
                       parse_config_arg)


def log(*msg) -> None:
    print(*msg, file=sys.stderr, flush=True)


def image_size(segmentor) -> tuple:
    size = segmentor.backbone.img_size
    return (size, size) if isinstance(size, int) else tuple(size)


def base_row(spec: ModelSpec, config_arg: str, part: str, dtype: str,
             segmentor, module, flops: Optional[int], hw) -> dict:
    """A row's identity and static measures (``segmentor`` None: a peer
    that cannot reach its target, nothing built)."""
    row = dict(model=spec.model_name, config=spec.config,
               config_arg=config_arg, checkpoint=spec.checkpoint,
               variant=spec.variant, backend=EAGER, label=spec.label,
               keep_rate=spec.keep_rate, impl=spec.impl,
               reconstruct=spec.reconstruct, part=part, dtype=dtype,
               img_size=spec.img_size, input_hw=list(hw), params=None,
               gflops=None if flops is None else flops / 1e9,
               tokens_per_layer=None, compression=spec.compression,
               match=spec.match, unreachable=spec.unreachable, timing={},
               memory=None)
    if segmentor is not None:
        backbone = segmentor.backbone
        patch = backbone.patch_embed.projection.kernel_size[0]
        grid = (-(-hw[0] // patch), -(-hw[1] // patch))
        row.update(params=parameter_count(module),
                   tokens_per_layer=tokens_per_layer(backbone, grid))
    return row


def backbone_flops(backbone, hw, device) -> int:
    return counted_flops(backbone, torch.randn(1, 3, *hw, device=device))


def calibrate_family_peers(specs: Sequence[ModelSpec], models, settings,
                           cfg_options, hw) -> List[ModelSpec]:
    """``specs`` with every peer calibrated to the counted backbone GFLOPs
    of the ``pm`` row of its keep rate (``models[i]`` is built for
    ``specs[i]``; peers have none yet)."""
    device = settings.device
    targets = {spec.keep_rate: backbone_flops(model.backbone, hw, device)
               for spec, model in zip(specs, models)
               if spec.variant == REFERENCE}
    reference = next(m for s, m in zip(specs, models)
                     if s.variant == REFERENCE)
    grid = reference.backbone.grid_size
    num_layers = len(reference.backbone.layers)

    def flops_of(compression: dict) -> float:
        spec = ModelSpec(specs[0].config, compression['method'],
                         img_size=specs[0].img_size, compression=compression)
        if image_dependent_counts(spec.variant):  # follow weights, image
            [model] = build_family([spec], cfg_options,
                                   weights=reference.state_dict())
            return mean_scene_flops(model.backbone.to(device), hw, device)
        backbone = build_segmentor(spec, cfg_options, backbone_only=True)
        return backbone_flops(backbone.to(device), hw, device)

    log(f'  calibrating {sum(s.variant in PEER_VARIANTS for s in specs)} '
        f'peers to the GFLOPs of the pm rows (within '
        f'{100 * settings.match_tolerance:g} %)')
    return calibrate_peers(specs, targets, flops_of, grid[0] * grid[1],
                           num_layers, settings.match_tolerance,
                           reference.backbone.cls_token.shape[-1])


def build_rows_models(specs: Sequence[ModelSpec], settings, cfg_options):
    """(specs, models): the family built with shared weights, peers
    calibrated first; an unreachable peer's model is None."""
    own = [s for s in specs if s.variant not in PEER_VARIANTS]
    built = build_family(own, cfg_options)
    built = [m.to(settings.device) for m in built]
    by_spec = dict(zip(map(id, own), built))
    models = [by_spec.get(id(s)) for s in specs]
    hw = image_size(built[0])
    if any(s.variant in PEER_VARIANTS for s in specs):
        specs = calibrate_family_peers(specs, models, settings, cfg_options,
                                       hw)
        reachable = [i for i, s in enumerate(specs)
                     if s.variant in PEER_VARIANTS and not s.unreachable]
        peers = build_family([specs[i] for i in reachable], cfg_options,
                             weights=family_weights(own[0], built[0]))
        for i, model in zip(reachable, peers):
            models[i] = model.to(settings.device)
    return list(specs), models, hw


def export_rows(rows, modules, part: str, settings, onnx_dir: Path,
                failures: dict) -> list:
    """onnxruntime rows (CPU) for the eager ``rows`` of ``--onnx-variants``:
    (row, session) pairs. An export that fails is recorded on its eager
    row (``onnx``: error class and reason) and tried once per variant and
    part (the same operators at every keep rate)."""
    threads = torch.get_num_threads()
    out = []
    for row, module in zip(rows, modules):
        if module is None or row['variant'] not in settings.onnx_variants:
            continue
        key = (row['variant'], part)
        if key in failures:
            row['onnx'] = dict(failures[key], exported=False,
                               tried='at another keep rate, same operators')
            continue
        name = f"{row['model']}_{part}_{row['variant']}_" + \
            f"{row['keep_rate'] or 'dense'}.onnx"
        # batch 2: torch.export specialises a dimension of size 1; seeded,
        # so a parity figure can be reproduced
        example = torch.randn(2, 3, *row['input_hw'],
                              generator=torch.Generator().manual_seed(0))
        log(f'  exporting {part} {row["label"]} to ONNX')
        path, seconds, failure = try_export(module, example, onnx_dir / name)
        if failure is not None:
            failures[key] = dict(failure, export_s=seconds)
            row['onnx'] = dict(failures[key], exported=False)
            continue
        session = onnx_session(path, threads)
        with torch.inference_mode():
            expected = module(example)
        diff = max_abs_diff(expected, onnx_step(session, example)())
        row['onnx'] = dict(exported=True, export_s=seconds,
                           max_abs_diff=diff,
                           file=str(path) if settings.onnx_dir else None)
        onnx_row = dict(copy.deepcopy(row), backend=ONNX,
                        label=row['label'] + ' [onnxruntime]', memory=None,
                        timing={})
        onnx_row.pop('ops', None)  # counted for PyTorch eager only
        out.append((onnx_row, session))
    return out


def compile_rows(rows, modules, settings, backend: str = COMPILE) -> list:
    """Compiled rows (``backend``: torch.compile, or its CUDA-graph mode)
    for the eager ``rows`` of ``--compile-variants``: (row, compiled
    module) pairs."""
    out = []
    for row, module in zip(rows, modules):
        if module is None or row['variant'] not in settings.compile_variants:
            continue
        compiled_row = dict(copy.deepcopy(row), backend=backend,
                            label=row['label'] + f' [{backend}]',
                            memory=None, timing={}, compile={})
        compiled_row.pop('ops', None)
        out.append((compiled_row, compile_module(module,
                                                 COMPILE_MODES[backend])))
    return out


def time_batch(batch: int, hw, eager, onnx, compiled, settings, dtype: str
               ) -> List[str]:
    """Time every row at ``batch``, interleaved; compiled rows first pay
    their compile (recorded apart). Returns notes."""
    device, notes = settings.device, []
    x = scene_images(batch, hw, device)  # a different scene per image
    calls = {}
    for i, (row, module) in enumerate(eager):
        if module is not None:
            calls[EAGER, i] = inference_step(module, x, device, dtype)
    for i, (row, session) in enumerate(onnx):
        calls[ONNX, i] = onnx_step(session, x)
    for i, (row, module) in enumerate(compiled):
        log(f'    compiling {row["label"]} for batch {batch}')
        step = inference_step(module, x, device, dtype)
        again = inference_step(module, torch.randn_like(x), device, dtype)
        row['compile'][batch] = first_calls(step, again, device)
        calls[COMPILE, i] = step
    log(f'  timing batch {batch}: {len(calls)} rows x {settings.repeats} '
        'repeats')
    before = compiled_graphs()
    times = time_interleaved(calls, settings.warmup, settings.repeats, device)
    if compiled_graphs() != before:
        notes.append(f'{compiled_graphs() - before} graphs were compiled '
                     f'while timing batch {batch}: a compiled row recompiled')
    rows = {EAGER: eager, ONNX: onnx, COMPILE: compiled}
    for (backend, i), seconds in times.items():
        rows[backend][i][0]['timing'][batch] = summarise(seconds, batch)
    return notes


def measure_part(part: str, config_arg: str, specs, models, hw, settings,
                 dtypes, memory: str, onnx_dir: Path, failures: dict):
    """Rows and notes of one part of one family."""
    device, rows, notes = settings.device, [], []
    modules = [None if m is None else part_module(m, part) for m in models]
    one = torch.randn(1, 3, *hw, device=device)
    flops, deviation = [], []
    for spec, seg, module in zip(specs, models, modules):
        if seg is None:
            counted = spec.match['gflops'] * 1e9 if part == 'backbone' \
                else None
            flops.append(counted)
            deviation.append((None, None))
            continue
        if image_dependent_counts(spec.variant):
            counted = mean_scene_flops(module, hw, device)
            backbone = counted if part == 'backbone' else \
                mean_scene_flops(seg.backbone, hw, device)
        else:
            counted = counted_flops(module, one)
            backbone = counted if part == 'backbone' else \
                counted_flops(seg.backbone, one)
        flops.append(counted)
        deviation.append((backbone, analytic_backbone_flops(seg.backbone,
                                                            hw)))
    for dtype in dtypes:
        eager = []
        for spec, seg, module, f, (backbone, analytic) in zip(
                specs, models, modules, flops, deviation):
            row = base_row(spec, config_arg, part, dtype, seg, module, f, hw)
            row['backbone_gflops'] = None if backbone is None \
                else backbone / 1e9
            row['backbone_gflops_analytic'] = None if analytic is None \
                else analytic / 1e9
            row['backbone_flops_deviation_pct'] = None \
                if analytic is None else 100 * (backbone / analytic - 1)
            if module is not None and dtype == dtypes[0]:
                row['ops'] = forward_ops(lambda: module(one))
                reducer = getattr(seg.backbone, 'reducer', None)
                row['ops']['units'] = 0 if reducer is None \
                    else len(reducer.merging_blocks())
            eager.append((row, module))
        onnx, compiled = [], []
        if 'onnx' in settings.backends:
            if device != 'cpu' or dtype != 'fp32':
                notes.append('onnxruntime rows: CPU execution provider, fp32 '
                             f'only (none for {device} {dtype})')
            else:
                onnx = export_rows([r for r, _ in eager], modules, part,
                                   settings, onnx_dir, failures)
        if 'compile' in settings.backends:
            compiled = compile_rows([r for r, _ in eager], modules, settings)
        if 'cudagraph' in settings.backends:
            if not device.startswith('cuda'):
                notes.append('CUDA-graph rows (torch.compile mode='
                             f"'reduce-overhead'): CUDA only, none on "
                             f'{device}')
            else:
                compiled += compile_rows([r for r, _ in eager], modules,
                                         settings, CUDA_GRAPH)
        for batch in settings.batch_sizes:
            log(f'  {part} {dtype} batch {batch}')
            notes += time_batch(batch, hw, eager, onnx, compiled, settings,
                                dtype)
            if settings.profile:
                x = torch.randn(batch, 3, *hw, device=device)
                for row, module in eager:
                    if module is not None:
                        row.setdefault('profile', {})[batch] = op_profile(
                            inference_step(module, x, device, dtype), device)
        if memory != 'none':
            batch = settings.memory_batch
            log(f'  peak memory {part} {dtype} batch {batch}')
            x = torch.randn(batch, 3, *hw, device=device)
            for row, module in eager:
                if module is None:
                    continue
                row['memory'] = dict(batch=batch)
                row['memory']['inference'] = peak_memory_bytes(
                    inference_step(module, x, device, dtype), device)
                if memory == 'all':
                    row['memory']['train'] = peak_memory_bytes(
                        train_step(module, x, device, dtype), device)
        rows += [r for r, _ in eager] + [r for r, _ in onnx] + \
            [r for r, _ in compiled]
    return rows, notes


def measure_family(config_arg: str, specs: Sequence[ModelSpec], settings,
                   cfg_options, parts, dtypes, memory: str,
                   onnx_dir: Optional[Path] = None):
    """Rows and notes of one family of models (same config and weights)."""
    log(f'building {len(specs)} models of {config_stem(specs[0].config)}'
        + (f' at {specs[0].img_size}' if specs[0].img_size else ''))
    specs, models, hw = build_rows_models(specs, settings, cfg_options)
    rows, notes, failures = [], [], {}
    for spec in specs:
        if spec.unreachable:
            notes.append(f'{spec.label}: {spec.unreachable}')
    for part in parts:
        part_rows, part_notes = measure_part(
            part, config_arg, specs, models, hw, settings, dtypes, memory,
            onnx_dir, failures)
        rows += part_rows
        notes += part_notes
    for (variant, part), failure in failures.items():
        notes.append(f'{variant} ({part}) does not export to ONNX: '
                     f'{failure["error"]}: {failure["reason"]}')
    del models
    gc.collect()
    return rows, notes


def settings_record(settings: BenchmarkSettings) -> dict:
    """The settings as the result JSON records them."""
    s = settings
    return dict(
        configs=list(s.configs), variants=list(s.variants),
        keep_rates=None if s.keep_rates is None else list(s.keep_rates),
        parts=list(s.parts), batch_sizes=list(s.batch_sizes),
        dtypes=list(s.dtypes), backends=list(s.backends),
        onnx_variants=list(s.onnx_variants),
        compile_variants=list(s.compile_variants),
        match_tolerance=s.match_tolerance, profile=s.profile,
        warmup=s.warmup, repeats=s.repeats, memory=s.memory,
        memory_batch=None if s.memory == 'none' else s.memory_batch,
        resolutions=list(s.resolutions), cfg_options=s.cfg_options or {},
        scaling=dict(configs=list(s.scaling_configs),
                     peers=list(s.scaling_peers),
                     large_gflops=s.scaling_large_gflops,
                     large_repeats=s.scaling_large_repeats)
        if s.scaling else None)


def run(settings: Optional[BenchmarkSettings] = None, **changes) -> dict:
    """Every row of ``settings`` (default: tools/benchmark.py's), any field
    changed by keyword (``run(configs=[...], repeats=2)``), measured;
    returns the results that
    :func:`mmseg_pm.benchmark.report.write_results` writes."""
    settings = dataclasses.replace(settings, **changes) if settings else \
        BenchmarkSettings(**changes)
    if settings.device == 'cpu' and 'fp16' in settings.dtypes:
        log('note: fp16 autocast on the CPU is slow; bf16 is the CPU\'s '
            'half precision')
    cfg_options = settings.cfg_options or {}
    results = dict(machine=machine_info(settings.device), rows=[], scale=[],
                   scaling=[], notes=[])
    results['settings'] = settings_record(settings)
    with tempfile.TemporaryDirectory(prefix='benchmark_onnx_') as tmp:
        onnx_dir = Path(settings.onnx_dir or tmp)
        for config_arg in settings.configs:
            config, checkpoint = parse_config_arg(config_arg)
            specs, notes = expand_specs(config, checkpoint, settings.variants,
                                        settings.keep_rates, cfg_options)
            results['notes'] += notes
            if specs:
                rows, notes = measure_family(config_arg, specs, settings,
                                             cfg_options, settings.parts,
                                             settings.dtypes, settings.memory,
                                             onnx_dir)
                results['rows'] += rows
                results['notes'] += notes
    if settings.resolutions:
        results['scale'] = measure_scale(settings, cfg_options)
        results['notes'].append(
            'input-size study: weights as in the table except pos_embed '
            '(resized models keep their own), structures on the lattice of '
            'each grid')
    if settings.scaling:
        results['scaling'], notes = measure_scaling(settings, cfg_options)
        results['notes'] += notes
    add_ratios(results['rows'])
    add_ratios(results['scale'])
    add_ratios(results['scaling'])
    results['checks'] = check_targets(results['rows'])
    results['load_average_end'] = [round(v, 2) for v in os.getloadavg()]
    return results


def measure_scale(settings: BenchmarkSettings, cfg_options) -> List[dict]:
    """The input-size study: the backbone of ``--scale-variants`` at each
    of ``--resolutions``, batch 1, fp32, PyTorch only."""
    config, checkpoint = parse_config_arg(settings.configs[0])
    scale_args = dataclasses.replace(settings, batch_sizes=(1, ), backends=(),
                                     profile=False)
    rows = []
    for size in settings.resolutions:
        specs, _ = expand_specs(config, checkpoint, settings.scale_variants,
                                settings.keep_rates, cfg_options)
        specs = [dataclasses.replace(s, img_size=(size, size))
                 for s in specs]
        rows += measure_family(settings.configs[0], specs, scale_args,
                               cfg_options, ['backbone'], ['fp32'],
                               'none')[0]
    return rows


def dense_gflops(config: str, cfg_options) -> float:
    """The config's dense encoder GFLOPs by formula (which models are
    'large' is decided before building anything)."""
    from mmseg_pm.utils.flops import vit_flops
    b = load_config(config, cfg_options).model.backbone
    size = b.img_size if isinstance(b.img_size, (list, tuple)) else \
        (b.img_size, b.img_size)
    tokens = (size[0] // b.patch_size) * (size[1] // b.patch_size)
    return vit_flops(tokens, b.embed_dims, b.num_layers, b.patch_size,
                     mlp_ratio=b.get('mlp_ratio', 4)) / 1e9


def measure_scaling(settings, cfg_options):
    """The scaling rows: per model, mmseg's dense Segmenter, this project's
    with compression off (its attention path alone is faster than mmseg's:
    every speed-up is given against both), PM keep 0.7 and (small models)
    the peers at its GFLOPs; batch 1, fp32, eager, whole segmentor.
    Returns (rows, notes)."""
    rows, notes = [], []
    for config in settings.scaling_configs:
        large = dense_gflops(config, cfg_options) > \
            settings.scaling_large_gflops
        peers = [] if large else list(settings.scaling_peers)
        repeats = settings.scaling_large_repeats if large else settings.repeats
        specs, _ = expand_specs(config, None,
                                ['mmseg', 'off', REFERENCE] + peers,
                                [0.7], cfg_options)
        scale_args = dataclasses.replace(settings, batch_sizes=(1, ),
                                         backends=(), profile=False,
                                         repeats=repeats)
        family, family_notes = measure_family(
            config, specs, scale_args, cfg_options, ['segmentor'],
            ['fp32'], 'none')
        for row in family:
            row['repeats'] = repeats
        rows += family
        notes += family_notes
        if large:
            notes.append(f'scaling: {config_stem(config)} (over '
                         f'{settings.scaling_large_gflops:g} dense GFLOPs): '
                         f'{repeats} timed calls per row, no peers')
    return rows, notes


def default_name(settings: BenchmarkSettings) -> str:
    """The result files' name: the first config's and the device's."""
    if not settings.configs:
        return f'scaling_{settings.device.replace(":", "")}'
    config, _ = parse_config_arg(settings.configs[0])
    device = settings.device.replace(':', '')
    return f'{config_stem(config)}_{device}'
