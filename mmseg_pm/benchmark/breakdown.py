"""Where a segmentor's time goes: blocks, merge, assignment, reconstruct,
decode head.

The parts are timed by wrapping them on the instances of one model (and
the content-aware assignment in :mod:`mmseg_pm.compression.unit`) with
clocks, only while :func:`time_parts` runs; the models take turns, as in
every benchmark of this project. What a part's clock shows includes the
Python around its call, so the parts of a model add up to slightly less
than its forward; the rest is reported as ``other`` (embedding, norms,
the class token, resizing).
"""
from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections import defaultdict
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch
from torch import Tensor, nn

import mmseg_pm.compression.unit as unit_module
from mmseg_pm.compression.unit import TokenCompressor
from mmseg_pm.utils.errors import UsageError

from .machine import machine_info
from .pipeline import image_size
from .variants import (REFERENCE, build_family, expand_specs, load_config,
                       pm_compression)

PARTS = ('blocks in units', 'other blocks', 'merge', 'assignment',
         'reconstruct', 'decode head', 'other')


class Clocks:
    """Seconds per part, accumulated over one forward."""

    def __init__(self):
        self.seconds: Dict[str, float] = defaultdict(float)

    def wrap(self, part: str, call: Callable) -> Callable:
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - start
        return timed


def unit_blocks(backbone: nn.Module) -> List[int]:
    """The blocks that run inside a Prune and Merge unit."""
    reducer = getattr(backbone, 'reducer', None)
    if reducer is None:
        return []
    return reducer.blocks(len(backbone.layers))


@contextlib.contextmanager
def clocked(segmentor: nn.Module, clocks: Clocks) -> Iterator[None]:
    """Clocks on the parts of ``segmentor`` while inside; the merge's
    clock excludes the assignment it calls."""
    backbone = segmentor.backbone
    inside = set(unit_blocks(backbone))
    patched = []

    def patch(owner, name, part):
        patched.append((owner, name, owner.__dict__.get(name)))
        setattr(owner, name, clocks.wrap(part, getattr(owner, name)))

    for i, block in enumerate(backbone.layers):
        patch(block, 'forward',
              'blocks in units' if i in inside else 'other blocks')
    for module in backbone.modules():
        if isinstance(module, TokenCompressor):
            patch(module, 'merge', 'merge')
            patch(module, 'reconstruct', 'reconstruct')
    patch(segmentor.decode_head, 'forward', 'decode head')
    assignment = unit_module.assign_rows
    unit_module.assign_rows = clocks.wrap('assignment', assignment)
    try:
        yield
    finally:
        unit_module.assign_rows = assignment
        for owner, name, before in reversed(patched):
            if before is None:
                delattr(owner, name)
            else:
                setattr(owner, name, before)


def time_parts(models: Dict[str, nn.Module], inputs: Tensor, warmup: int,
               repeats: int) -> Dict[str, Dict[str, float]]:
    """Median milliseconds per part (:data:`PARTS`) and in all
    (``'total'``) of every segmentor's tensor forward on ``inputs``, the
    models taking turns."""
    runs: Dict[str, List[Dict[str, float]]] = {name: [] for name in models}
    for step in range(warmup + repeats):
        for name, model in models.items():
            clocks = Clocks()
            with clocked(model, clocks), torch.inference_mode():
                start = time.perf_counter()
                model(inputs, mode='tensor')
                total = time.perf_counter() - start
            if step < warmup:
                continue
            parts = dict(clocks.seconds)
            parts['merge'] = parts.get('merge', 0.0) - parts.get(
                'assignment', 0.0)
            parts['other'] = total - sum(parts.values())
            parts['total'] = total
            runs[name].append(parts)
    return {name: {part: 1e3 * statistics.median(r.get(part, 0.0)
                                                 for r in results)
                   for part in PARTS + ('total', )}
            for name, results in runs.items()}


def breakdown_table(results: Dict[tuple, Dict[str, float]],
                    keys: Sequence[tuple]) -> str:
    """Markdown: one row per (model, batch) key, each part's share of the
    forward (and its milliseconds), the assignment against the blocks of
    its units."""
    head = ('| model | batch | forward ms | ' + ' | '.join(PARTS)
            + ' | assignment / its units\' blocks |')
    lines = [head, '|' + '---|' * (len(PARTS) + 4)]
    for key in keys:
        parts = results[key]
        total = parts['total']
        cells = [f'{100 * parts[p] / total:.1f} % ({parts[p]:.0f})'
                 if parts[p] >= 0.5 else '-' for p in PARTS]
        blocks = parts['blocks in units']
        ratio = f'{100 * parts["assignment"] / blocks:.2f} %' \
            if blocks and parts['assignment'] else '-'
        lines.append(f'| {key[0]} | {key[1]} | {total:.0f} | '
                     + ' | '.join(cells) + f' | {ratio} |')
    return '\n'.join(lines)


def assignment_costs(grid=(32, 32), embed_dims: int = 384,
                     keep_rates: Sequence[float] = (0.7, 0.5),
                     batch_sizes: Sequence[int] = (1, 8), warmup: int = 2,
                     repeats: int = 10, seed: int = 0) -> List[dict]:
    """Milliseconds of the content-aware assignment of one unit (random
    centres, as ``tools/prune.py`` places them; random tokens) and of one
    ViT block (timm's, ``embed_dims / 64`` heads)
    on the unit's K + 1 tokens, taking turns: the assignment's share of
    its unit."""
    from timm.models.vision_transformer import Block

    from mmseg_pm.apis.timing import time_interleaved
    from mmseg_pm.compression.content import assign_rows
    from mmseg_pm.compression.search import place_centres
    from mmseg_pm.compression.structure import build_structure

    n = grid[0] * grid[1]
    block = Block(embed_dims, max(1, embed_dims // 64)).eval()
    rows = []
    for keep in keep_rates:
        k = int(round(keep * n))
        centre = place_centres(torch.zeros(n), k, grid, placement='random',
                               seed=seed).sort().values
        unit = TokenCompressor(build_structure(grid, centre, [], None))
        table = unit._candidates
        for batch in batch_sizes:
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(batch, 1 + n, embed_dims, generator=g)
            merged = torch.randn(batch, 1 + k, embed_dims, generator=g)
            plan = unit._plan(batch, 1, x.device).assignment
            calls = {'assignment': lambda: assign_rows(x, plan),
                     'block': lambda: block(merged)}
            with torch.inference_mode():
                seconds = time_interleaved(calls, warmup, repeats)
            ms = {name: 1e3 * statistics.median(t)
                  for name, t in seconds.items()}
            rows.append(dict(keep_rate=keep, batch=batch, tokens=n,
                             centres=k, pairs=table.num_pairs,
                             merged_tokens=int(table.free.numel()), ms=ms))
    return rows


def assignment_table(rows: Sequence[dict]) -> str:
    """Markdown: each formulation's milliseconds and share of the block."""
    names = [name for name in rows[0]['ms'] if name != 'block']
    lines = ['| keep | batch | merged tokens | pairs | block ms | '
             + ' | '.join(f'{name} ms (% of block)' for name in names)
             + ' |', '|' + '---|' * (5 + len(names))]
    for row in rows:
        block = row['ms']['block']
        cells = [f'{row["ms"][name]:.2f} ({100 * row["ms"][name] / block:.2f}'
                 ' %)' for name in names]
        lines.append(f'| {row["keep_rate"]} | {row["batch"]} | '
                     f'{row["merged_tokens"]} | {row["pairs"]} | {block:.1f} '
                     '| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


# the rows timed part by part, and their names in the report
PARTS_ROWS = {'off': 'dense', REFERENCE: 'content', 'pm-static': 'static'}


def check_parts_config(config: str, keep_rates: Sequence[float],
                       cfg_options: Optional[dict] = None) -> None:
    """Something to break down: a dense or Prune-and-Merge config (the
    parts timed are Prune and Merge's) and a keep rate below 1."""
    backbone = load_config(config, cfg_options).model.backbone
    own = backbone.get('compression')
    if own is not None and pm_compression(backbone) is None:
        raise UsageError(
            f'{config} compresses with method={own.get("method")!r}, but '
            "the parts timed here are Prune and Merge's (merge, assignment,"
            ' reconstruct): give a Prune-and-Merge or dense config, and time'
            f' this one whole with tools/benchmark.py {config} --variants '
            'config')
    if not any(rate < 1 for rate in keep_rates):
        raise UsageError(f'--keep-rates {" ".join(map(str, keep_rates))}: '
                         'a keep rate of 1 compresses nothing; give rates '
                         'below 1 (e.g. 0.7 0.5)')


def parts_models(config: str, keep_rates: Sequence[float],
                 cfg_options: Optional[dict] = None) -> Dict[str, nn.Module]:
    """The config's segmentor dense (compression off), and at every keep
    rate with content-aware (the default) and with static windows: the
    benchmark's rows of them (:func:`~.variants.expand_specs`, centres on
    the built-in lattice), random weights shared by all, eval mode."""
    check_parts_config(config, keep_rates, cfg_options)
    specs, _ = expand_specs(config, None, tuple(PARTS_ROWS), keep_rates,
                            cfg_options)
    return {PARTS_ROWS[spec.variant] + (f' keep {spec.keep_rate}'
                                        if spec.keep_rate else ''):
            model.eval() for spec, model in zip(specs, build_family(
                specs, cfg_options))}


def measure_parts(config: str, keep_rates: Sequence[float] = (0.7, 0.5),
                  batch_sizes: Sequence[int] = (1, 8), warmup: int = 1,
                  repeats: int = 5, cfg_options: Optional[dict] = None
                  ) -> dict:
    """The time breakdown (:func:`time_parts`) of :func:`parts_models` at
    every batch size, and the assignment microbenchmark
    (:func:`assignment_costs`) at the config's grid and width, with the
    machine and settings: what ``tools/benchmark_parts.py`` writes."""
    info = machine_info('cpu')
    models = parts_models(config, keep_rates, cfg_options)
    backbone = models['dense'].backbone
    h, w = image_size(models['dense'])
    patch = backbone.patch_embed.projection.kernel_size[0]
    embed_dims = backbone.patch_embed.projection.out_channels
    breakdown = []
    for batch in batch_sizes:
        inputs = torch.randn(batch, 3, h, w,
                             generator=torch.Generator().manual_seed(0))
        for name, parts in time_parts(models, inputs, warmup,
                                      repeats).items():
            breakdown.append(dict(model=name, batch=batch, ms=parts))
    assignment = assignment_costs((h // patch, w // patch), embed_dims,
                                  keep_rates, batch_sizes,
                                  warmup=2, repeats=max(repeats, 10))
    info['load_average_end'] = [round(v, 2) for v in os.getloadavg()]
    return dict(config=config, machine=info, keep_rates=list(keep_rates),
                batch_sizes=list(batch_sizes), warmup=warmup,
                repeats=repeats, breakdown=breakdown, assignment=assignment)


def render_parts(results: dict) -> str:
    """The Markdown report of :func:`measure_parts`."""
    m = results['machine']
    rows = {(r['model'], r['batch']): r['ms'] for r in results['breakdown']}
    keys = sorted(rows, key=lambda key: (key[1], list(rows).index(key)))
    return '\n'.join([
        f'# Where the time goes: {results["config"]}', '',
        f'{m["date"]}  cpu {m["cpu"]} ({m["cpu_cores_usable"]} cores '
        f'usable)  threads {m["threads"]}  torch {m["torch"]}  load average '
        f'at start {m["load_average"]}, at end {m["load_average_end"]}', '',
        f'{results["warmup"]} warm-up + {results["repeats"]} interleaved '
        'runs per model, median; random weights and inputs; shares of the '
        "whole segmentor's forward (milliseconds in brackets). 'blocks in "
        "units' are the blocks that run on merged tokens; 'merge' excludes "
        "the assignment it calls; 'other' is the embedding, norms, resizing "
        'and the Python between parts.', '',
        '## The whole segmentor', '', breakdown_table(rows, keys), '',
        '## The assignment of one unit against one block on its tokens', '',
        'The same threads, random centres (as tools/prune.py places '
        'them), random tokens; the assignment as every run computes it '
        '(assign_rows).', '',
        assignment_table(results['assignment']), ''])
