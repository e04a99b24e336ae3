"""The demo pipeline (``./run demo``; its command line:
``mmseg_pm.cli.demo``): synthetic data, a dense tiny Segmenter, token
scores, Prune and Merge with the residual and the authors' reconstruction
at one structure, distillation, evaluation with mmseg's IoUMetric, GFLOPs
and images/s side by side, the merge windows drawn. Every step is a call
into :mod:`mmseg_pm.apis`; :func:`run_demo` returns what it writes to
``results.json``."""
import contextlib
import dataclasses
import io
import json
import time
from pathlib import Path
from typing import Optional, Tuple

import torch
from mmengine.config import Config

from mmseg_pm.apis import (crop_flops, evaluation_config, init_segmentor,
                           prune_config, prune_segmentor, save_pruned,
                           train_config)
from mmseg_pm.apis.config import (DENSE_CONFIG, DISTILL_CONFIG, PM_CONFIG,
                                  load_config, scaled_schedule, write_config)
from mmseg_pm.apis.inference import crop_size
from mmseg_pm.apis.prune import format_prune_table
from mmseg_pm.apis.runner import run_quietly
from mmseg_pm.apis.timing import images_per_second
from mmseg_pm.benchmark.measure import tokens_per_layer
from mmseg_pm.compression import (ASSIGNS, DEFAULT_PLACEMENT, PLACEMENTS,
                                  RANKINGS, RECONSTRUCTS, PMConfig)
from mmseg_pm.compression.registry import config_default
from mmseg_pm.compression.structure import ASSIGN_RULES, DEFAULT_RULE
from mmseg_pm.datasets import make_synthetic_ade
from mmseg_pm.utils.errors import UsageError
from mmseg_pm.utils.outputs import write_atomic
from mmseg_pm.utils.tables import markdown_table, text_table
from mmseg_pm.visualization import draw_model_tokens


# The demo's compression: at least 30 % fewer GFLOPs than the dense model.
DEMO_LAYERS = (0, 1, 2, 3)
DEMO_KEEP_RATE = 0.3
DEMO_PRUNE_RATE = 0.1
DEMO_RULE = DEFAULT_RULE  # the configs' (the authors')


def default_device() -> str:
    return 'cuda' if torch.cuda.is_available() else 'cpu'


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """Everything one demo run depends on (``tools/demo.py``'s options,
    same names and defaults: its parser reads them from here). Checked on
    construction."""

    data_root: str = 'data/synthetic_ade'
    work_dir: str = 'work_dirs/demo'
    train_iters: int = 400
    distill_iters: int = 200
    score_iters: int = 20
    keep_rate: float = DEMO_KEEP_RATE
    prune_rate: float = DEMO_PRUNE_RATE
    layers: Tuple[int, ...] = DEMO_LAYERS
    ranking: str = 'global'
    rule: str = DEMO_RULE
    placement: str = DEFAULT_PLACEMENT
    reconstruct: str = config_default(PMConfig, 'reconstruct')
    assign: str = config_default(PMConfig, 'assign')
    bench_batch: int = 16
    device: str = dataclasses.field(default_factory=default_device)

    def __post_init__(self):
        for name in ('train_iters', 'distill_iters', 'score_iters',
                     'bench_batch'):
            if getattr(self, name) < 1:
                raise UsageError(f'--{name.replace("_", "-")} must be >= 1')
        if not 0 < self.keep_rate <= 1 or not 0 <= self.prune_rate < 1 or \
                self.keep_rate + self.prune_rate > 1:
            raise UsageError('need 0 < --keep-rate <= 1, 0 <= --prune-rate '
                             '< 1 and keep + prune <= 1')
        for name, allowed in (('ranking', RANKINGS), ('rule', ASSIGN_RULES),
                              ('placement', PLACEMENTS),
                              ('reconstruct', RECONSTRUCTS),
                              ('assign', ASSIGNS),
                              ('device', ('cpu', 'cuda'))):
            if getattr(self, name) not in allowed:
                raise UsageError(f'--{name} {getattr(self, name)!r}: choose '
                                 f'one of {", ".join(allowed)}')
        object.__setattr__(self, 'layers', tuple(self.layers))

    def check_compression(self) -> None:
        """The demo's compression on the tiny model, checked before any
        work (one :class:`UsageError` naming what is wrong)."""
        load_config(str(PM_CONFIG), {
            'model.backbone.compression.layers': list(self.layers),
            'model.backbone.compression.keep_rate': self.keep_rate,
            'model.backbone.compression.prune_rate': self.prune_rate})


def data_options(root: str) -> dict:
    """--cfg-options pointing every dataloader at the data under ``root``."""
    return {f'{split}_dataloader.dataset.data_root': root
            for split in ('train', 'val', 'test')}


def schedule_options(config: Path, iters: int) -> dict:
    """A training run of ``iters`` iterations that checkpoints at its end,
    with ``config``'s schedule (a warm-up included) stretched to it."""
    cfg = Config.fromfile(str(config))
    return {'train_cfg.max_iters': iters,
            'param_scheduler': scaled_schedule(
                cfg.param_scheduler, cfg.train_cfg.max_iters, iters),
            'default_hooks.checkpoint.interval': iters}


def train_for(config: Path, work_dir: Path, root: str, iters: int,
              desc: str, options: Optional[dict] = None) -> str:
    """Train ``config`` for ``iters`` iterations on the data under
    ``root`` with a progress bar; returns the final checkpoint."""
    run_quietly(train_config(
        str(config), str(work_dir),
        {**data_options(root), **schedule_options(config, iters),
         **(options or {})}),
        desc, 'train')
    return str(work_dir / f'iter_{iters}.pth')


def demo_config(source: Path, args, reconstruct: str, path: Path,
                assign: Optional[str] = None) -> Path:
    """``source`` with the demo's compression (blocks, reconstruction and
    assignment, default ``args.assign``), written to ``path`` so that
    prune, test, distillation and the picture all read the same model."""
    cfg = Config.fromfile(str(source))
    cfg.model.backbone.compression.update(layers=list(args.layers),
                                          reconstruct=reconstruct,
                                          assign=assign or args.assign)
    return write_config(cfg, path)


def prune_dense(config: Path, dense_ckpt: str, out: str, args, root: str,
                log: io.StringIO) -> dict:
    """Score, search and install with the demo's settings (what
    tools/prune.py does); its table goes to ``log``."""
    cfg = prune_config(str(config), data_options(root),
                       keep_rate=args.keep_rate, prune_rate=args.prune_rate,
                       rule=args.rule)
    with contextlib.redirect_stdout(log):
        model, summary, meta = prune_segmentor(
            cfg, dense_ckpt, args.ranking, args.score_iters, args.placement,
            device=args.device)
        save_pruned(model, summary, out, meta)
        print(format_prune_table(summary))
    return summary


HEADER = ('model', 'mIoU', 'vs dense', 'GFLOPs', 'FLOPs cut', 'images/s',
          'tokens per block')


def table_cells(rows: list) -> list:
    """One tuple of strings per row; the first row is the dense model."""
    dense = rows[0]
    return [(r['model'], f'{r["mIoU"]:.2f}',
             f'{r["mIoU"] - dense["mIoU"]:+.2f}', f'{r["gflops"]:.4f}',
             f'{100 * (1 - r["gflops"] / dense["gflops"]):.1f}%',
             f'{r["images_per_s"]:.0f}',
             ' / '.join(str(t) for t in r['tokens_per_block']))
            for r in rows]


# the model's name and the token counts read left-aligned, numbers right
_RIGHT = (1, 2, 3, 4, 5)


def format_table(rows: list) -> str:
    return text_table(HEADER, table_cells(rows), _RIGHT)


def format_markdown(rows: list, note: str) -> str:
    return markdown_table(HEADER, table_cells(rows), _RIGHT) + \
        f'\n\n{note}\n'


def run_demo(settings: Optional[DemoSettings] = None, **changes) -> dict:
    """The whole demo with ``settings`` (default: tools/demo.py's), any
    field changed by keyword (``run_demo(train_iters=2, work_dir=...)``);
    returns what it writes to results.json."""
    args = dataclasses.replace(settings, **changes) if settings else \
        DemoSettings(**changes)
    args.check_compression()
    work = Path(args.work_dir)
    timings = {}
    start = time.perf_counter()

    print(f'[1/6] synthetic ADE20K-format data in {args.data_root}')
    try:
        data = make_synthetic_ade(args.data_root, progress=True)
    except FileExistsError as err:  # before the work dir is made
        raise UsageError(
            f'--data-root {args.data_root} holds other files than the '
            "demo's synthetic data set, which the demo generates there; "
            'pass an empty or new folder (or delete that one)') from err
    root = data['root']
    work.mkdir(parents=True, exist_ok=True)
    timings['data_s'] = time.perf_counter() - start

    print(f'[2/6] train the dense tiny Segmenter ({args.train_iters} iters)')
    t = time.perf_counter()
    dense_ckpt = train_for(DENSE_CONFIG, work / 'dense', root,
                           args.train_iters, 'train dense')
    timings['train_dense_s'] = time.perf_counter() - t

    print(f'[3/6] score tokens ({args.score_iters} batches), prune and merge')
    pm_config = demo_config(PM_CONFIG, args, args.reconstruct,
                            work / 'pm_config.py')
    distill_config = demo_config(DISTILL_CONFIG, args, args.reconstruct,
                                 work / 'distill_config.py')
    t = time.perf_counter()
    pruned_ckpt = str(work / 'pruned.pth')
    prune_log = io.StringIO()
    summary = prune_dense(pm_config, dense_ckpt, pruned_ckpt, args, root,
                          prune_log)
    # The authors' reconstruction (static windows) at the same settings,
    # for comparison.
    compare_pinv = args.reconstruct != 'pinv'
    if compare_pinv:
        pinv_config = demo_config(PM_CONFIG, args, 'pinv',
                                  work / 'pm_pinv_config.py', 'static')
        pinv_ckpt = str(work / 'pruned_pinv.pth')
        prune_dense(pinv_config, dense_ckpt, pinv_ckpt, args, root,
                    prune_log)
    write_atomic(work / 'prune.log', prune_log.getvalue())
    timings['prune_s'] = time.perf_counter() - t

    print(f'[4/6] distillation fine-tuning ({args.distill_iters} iters)')
    t = time.perf_counter()
    distilled_ckpt = train_for(
        distill_config, work / 'distill', root, args.distill_iters,
        'distill', {'load_from': pruned_ckpt,
                    'model.teacher_checkpoint': dense_ckpt})
    timings['distill_s'] = time.perf_counter() - t

    print('[5/6] evaluate with mmseg IoUMetric (tools/test.py)')
    t = time.perf_counter()
    variants = [('dense', DENSE_CONFIG, dense_ckpt)]
    if compare_pinv:
        variants.append(("authors' pinv, no fine-tuning", pinv_config,
                         pinv_ckpt))
    variants += [(f'{args.reconstruct}, no fine-tuning', pm_config,
                  pruned_ckpt),
                 (f'{args.reconstruct} + distilled', pm_config,
                  distilled_ckpt)]
    metrics = {}
    for name, config, ckpt in variants:
        metrics[name] = run_quietly(evaluation_config(
            str(config), ckpt, str(work / 'test'), data_options(root)),
            f'test {name}', 'test')
    timings['test_s'] = time.perf_counter() - t

    print('[6/6] GFLOPs, images/s and the picture of the merge windows')
    t = time.perf_counter()
    models = {name: init_segmentor(str(config), ckpt, device=args.device)
              for name, config, ckpt in variants}
    img_size = crop_size(models['dense'])
    flops = {name: crop_flops(m) for name, m in models.items()}
    crops = torch.randn(args.bench_batch, 3, *img_size, device=args.device)
    speed = images_per_second(models, crops, warmup=3, repeats=10,
                              device=args.device)
    backbone = models[variants[-1][0]].backbone
    grid = tuple(backbone.grid_size)
    val_image = sorted(Path(data['validation_img_dir']).glob('*.jpg'))[0]
    picture = work / 'merge_windows.png'
    pm = models[f'{args.reconstruct}, no fine-tuning']
    draw_model_tokens(Config.fromfile(str(pm_config)), pm, pruned_ckpt,
                      str(val_image), str(picture), dpi=90)
    timings['measure_s'] = time.perf_counter() - t
    timings['total_s'] = time.perf_counter() - start

    rows = [dict(model=name, mIoU=float(metrics[name]['mIoU']),
                 gflops=flops[name] / 1e9, images_per_s=speed[name],
                 tokens_per_block=tokens_per_layer(models[name].backbone,
                                                   grid))
            for name, _, _ in variants]
    note = (f'Synthetic ADE20K-format data ({data["num_val"]} validation '
            f'images), tiny Segmenter (4 blocks, {img_size[0]}x{img_size[1]}'
            f' crops, {backbone.grid_size[0]}x{backbone.grid_size[1]} '
            f'tokens); blocks {list(args.layers)} compressed, keep_rate '
            f'{args.keep_rate}, prune_rate {args.prune_rate}, {args.ranking} '
            f'ranking, {args.placement} placement, {args.rule} rule, '
            f'{args.reconstruct} reconstruction. '
            'GFLOPs: one crop; images/s: batches of '
            f'{args.bench_batch} crops, median of 10 interleaved runs, device '
            f'{args.device}, {torch.get_num_threads()} thread(s); tokens per '
            'block '
            'include the class token. '
            f'Total time {timings["total_s"]:.0f} s.')
    table = format_table(rows)
    result = dict(rows=rows, settings=dict(
        dataclasses.asdict(args), threads=torch.get_num_threads()),
                  timings_s=timings,
                  checkpoints=dict(dense=dense_ckpt, pruned=pruned_ckpt,
                                   distilled=distilled_ckpt),
                  picture=str(picture), note=note,
                  prune={k: v for k, v in summary.items() if k != 'scores'})
    write_atomic(work / 'results.json', json.dumps(result, indent=2) + '\n')
    write_atomic(work / 'results.md', format_markdown(rows, note))
    print()
    print(table)
    print()
    print(note)
    print(f'outputs in {work}/: results.md, results.json, merge_windows.png, '
          'prune.log, dense/ distill/ (checkpoints and logs)')
    return result


