"""Quality study at matched FLOPs: every token-compression method on one
trained dense Segmenter, calibrated to the same GFLOPs, evaluated before and
after the same distillation fine-tune.

On the built-in synthetic ADE20K-format data (a small proxy, not ADE20K):

1. make the data, train ONE dense Segmenter (mmseg's VisionTransformer);
2. score its tokens once (gradient-weighted attention, DESIGN.md §2.1);
3. for each budget (fraction of the dense encoder+decoder GFLOPs, counted
   with ``count_flops``) and each method -- Prune and Merge per layer with
   the 'row' and the 'nearest' rule, Prune and Merge span mode, MSTM, ToMe
   and random centres (the floor) -- search the method's knob until its
   GFLOPs are within ``--tolerance`` of the target, evaluate it (mmseg's
   IoUMetric via tools/test.py), fine-tune it with distillation from the
   dense model (same iterations, seed and data for every method) and
   evaluate again;
4. measure images/s of all models side by side at batch 1;
5. write table.md, results.json and miou_vs_gflops.png to ``--out-dir``.

Example::

    python tools/study.py                          # ~21 min on 2 shared cores
    python tools/study.py --budgets 0.7 --methods pm-row tome --dense-iters 100

Stages are cached under ``--work-dir`` by their settings: running again with
the same settings reuses the dense model and finished variants (``--fresh``
recomputes everything).
"""
import argparse
import copy
import json
import os
import platform
import sys
import time
import warnings
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import mmseg_pm  # noqa: E402,F401  (registers modules and the mmseg:: scope)
import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402

from mmseg_pm.compression import (CompressionConfig,  # noqa: E402
                                  search_structures,
                                  token_scores_from_config)
from mmseg_pm.benchmark import time_interleaved  # noqa: E402
from mmseg_pm.benchmark.measure import summarise  # noqa: E402
from mmseg_pm.cli import load_tool, write_config  # noqa: E402
from mmseg_pm.datasets import make_synthetic_ade  # noqa: E402
from mmseg_pm.study import (DEFAULT_METHODS, METHODS,  # noqa: E402
                            CalibrationError, best_per_budget,
                            calibrate_knob, check_within, compression_for,
                            format_markdown, format_table,
                            format_windows_markdown, knob_range, knob_text,
                            plot_study, search_ranking, window_stats)
from mmseg_pm.utils import (checkpoint_state_dict, count_flops,  # noqa: E402
                            load_checkpoint_file, save_checkpoint_atomic)

DENSE_CONFIG = REPO / 'configs/synthetic/segmenter_vit-tiny_mask_synthetic-ade-64x64.py'  # noqa: E501
DISTILL_CONFIG = REPO / 'configs/distill/distill-pm-segmenter_vit-tiny_mask_synthetic-ade-64x64.py'  # noqa: E501
PROXY_NOTE = ('A small proxy, not ADE20K: synthetic ADE20K-format scenes and '
              'a tiny Segmenter trained from scratch on CPU; the numbers '
              'rank the methods on this proxy only.')



demo = load_tool('demo')  # runs tools with progress bars, builds models


# ---------------------------------------------------------------- configs
def _pipeline_step(pipeline, kind: str) -> dict:
    steps = [s for s in pipeline if s['type'] == kind]
    if len(steps) != 1:
        raise ValueError(f'{DENSE_CONFIG} should have one {kind} step in '
                         f'its pipeline, found {len(steps)}')
    return steps[0]


def study_config(args) -> Config:
    """The synthetic dense config at the study's size: crops = whole
    images (``img_size`` square), ``num_layers`` blocks, whole-image
    inference, the study's data root, batch size and seed."""
    cfg = Config.fromfile(str(DENSE_CONFIG))
    size = (args.img_size, args.img_size)
    cfg.crop_size = size
    cfg.model.data_preprocessor.size = size
    cfg.data_preprocessor.size = size
    cfg.model.backbone.img_size = size
    cfg.model.backbone.num_layers = args.num_layers
    cfg.model.test_cfg = dict(mode='whole')
    train = cfg.train_dataloader.dataset.pipeline
    # zoom in by up to 1.5x, never out: crops are always full of image
    _pipeline_step(train, 'RandomResize').update(scale=size,
                                                 ratio_range=(1.0, 1.5))
    _pipeline_step(train, 'RandomCrop')['crop_size'] = size
    _pipeline_step(cfg.test_dataloader.dataset.pipeline,
                   'Resize')['scale'] = size
    for split in ('train', 'val', 'test'):
        cfg[f'{split}_dataloader'].dataset.data_root = str(args.data_root)
    cfg.val_dataloader = cfg.test_dataloader
    cfg.train_dataloader.batch_size = args.batch_size
    cfg.randomness = dict(seed=args.seed)
    cfg.log_level = 'WARNING'
    return cfg


def with_iters(cfg: Config, iters: int) -> Config:
    """A copy that trains ``iters`` iterations and checkpoints at the end."""
    cfg = copy.deepcopy(cfg)
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = iters
    cfg.param_scheduler[0]['end'] = iters
    cfg.default_hooks.checkpoint.interval = iters
    return cfg


def compressed_config(base: Config, compression: dict) -> Config:
    cfg = copy.deepcopy(base)
    cfg.model.backbone.type = 'PMVisionTransformer'
    cfg.model.backbone.compression = compression
    return cfg


def distill_config(student: Config, teacher_model: dict, teacher_ckpt: str,
                   load_from: str, iters: int) -> Config:
    """The student's config as a DistillEncoderDecoder, with the project's
    distillation settings (alpha, T, optimizer, schedule) read from
    DISTILL_CONFIG."""
    settings = Config.fromfile(str(DISTILL_CONFIG))
    cfg = with_iters(student, iters)
    model = {k: v for k, v in cfg.model.items() if k != 'type'}
    cfg.model = dict(type='DistillEncoderDecoder',
                     teacher_config=copy.deepcopy(teacher_model),
                     teacher_checkpoint=str(teacher_ckpt),
                     distill_alpha=settings.model.distill_alpha,
                     distill_temperature=settings.model.distill_temperature,
                     **model)
    cfg.optim_wrapper = settings.optim_wrapper
    cfg.param_scheduler = copy.deepcopy(settings.param_scheduler)
    cfg.param_scheduler[0]['end'] = iters
    cfg.load_from = str(load_from)
    return cfg


# ---------------------------------------------------------------- caching
def cached(path: Path, stamp: dict, compute, fresh: bool):
    """``compute()``'s JSON-able value, stored at ``path`` with the
    settings ``stamp`` that produced it and reused while they match.
    Returns (value, record): the seconds the computation took, the 1-min
    load average when it ended, and whether this run reused it."""
    if not fresh and path.is_file():
        saved = json.loads(path.read_text())
        if saved.get('stamp') == stamp and 'record' in saved:
            return saved['value'], dict(saved['record'], reused=True)
    start = time.perf_counter()
    value = compute()
    record = dict(seconds=time.perf_counter() - start,
                  load_average=os.getloadavg()[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    demo.write_atomic(path, json.dumps(
        dict(stamp=stamp, record=record, value=value), indent=1) + '\n')
    return value, dict(record, reused=False)


# ---------------------------------------------------------------- models
def build_segmentor(cfg: Config):
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    return MODELS.build(copy.deepcopy(cfg.model)).eval()


def load_dense(model, state: dict) -> None:
    """Dense weights into a compressed model; only the compressors' own
    entries (structures, MSTM's zero-initialised coarse branch) may be
    missing from them."""
    own = {k: v for k, v in model.state_dict().items()
           if '.token_compressors.' in k or '.token_merger.' in k}
    model.load_state_dict({**own, **state}, strict=True)


def flops_of(model, img_size: int) -> int:
    x = torch.zeros(1, 3, img_size, img_size)
    return count_flops(model, x, mode='tensor')


def train(cfg: Config, work_dir: Path, desc: str) -> str:
    """tools/train.py on ``cfg``; returns the final checkpoint."""
    config = write_config(cfg, work_dir / 'config.py')
    demo.run_tool(load_tool('train'),
                  [str(config), '--work-dir', str(work_dir)], desc, 'train')
    checkpoint = work_dir / f'iter_{cfg.train_cfg.max_iters}.pth'
    if not checkpoint.is_file():
        raise RuntimeError(f'training wrote no {checkpoint}')
    return str(checkpoint)


def evaluate(config: Path, checkpoint: str, work_dir: Path, desc: str
             ) -> float:
    """mIoU (%) of tools/test.py (mmseg's IoUMetric) on the validation
    split."""
    metrics = demo.run_tool(load_tool('test'), [
        str(config), str(checkpoint), '--work-dir', str(work_dir / 'test')
    ], desc, 'test')
    return float(metrics['mIoU'])


def compress(method: str, budget: float, base: Config, dense_state: dict,
             dense_flops: int, scores, args):
    """The method's model at the knob whose GFLOPs are nearest
    ``budget * dense_flops``; returns (model, config, knob, flops)."""
    n = (args.img_size // base.model.backbone.patch_size) ** 2
    grid = (int(n ** 0.5), ) * 2
    layers = args.num_layers
    family = METHODS[method].family

    def config_at(knob):
        return compressed_config(base, compression_for(
            method, knob, layers, n, args.prune_rate))

    def pm_config(knob):
        return CompressionConfig.from_dict(
            compression_for(method, knob, layers, n, args.prune_rate), layers)

    def structures_at(knob):
        return search_structures(scores, pm_config(knob), grid,
                                 search_ranking(method),
                                 METHODS[method].placement, args.seed)

    if family == 'pm':
        model = build_segmentor(config_at(1))

        def flops_at(knob):
            model.backbone.set_structures(structures_at(knob))
            return flops_of(model, args.img_size)
    else:
        def flops_at(knob):
            return flops_of(build_segmentor(config_at(knob)), args.img_size)

    target = budget * dense_flops
    knob, flops = calibrate_knob(flops_at, *knob_range(method, n, layers),
                                 target)
    check_within(method, flops, target, args.tolerance)
    cfg = config_at(knob)
    model = build_segmentor(cfg)
    load_dense(model, dense_state)
    if family == 'pm':
        model.backbone.set_structures(structures_at(knob))
    counted = flops_of(model, args.img_size)
    if counted != flops:
        raise RuntimeError(f'{method}: the rebuilt model counts {counted} '
                           f'FLOPs, the calibration {flops}')
    return model, cfg, knob, flops


def run_variant(method: str, budget: float, base: Config, dense: dict,
                scores, args) -> dict:
    """Calibrate, evaluate, fine-tune and evaluate one method at one
    budget; returns its row (without images/s)."""
    name = f'{method}_{round(100 * budget)}'
    work = Path(args.work_dir) / 'variants' / name
    dense_state = checkpoint_state_dict(
        load_checkpoint_file(dense['checkpoint']))
    model, cfg, knob, flops = compress(method, budget, base, dense_state,
                                       dense['flops'], scores, args)
    config = write_config(cfg, work / 'config.py')
    compressed = work / 'compressed.pth'
    save_checkpoint_atomic(dict(state_dict={
        k: v.detach().cpu() for k, v in model.state_dict().items()}),
        str(compressed))
    n = (args.img_size // base.model.backbone.patch_size) ** 2
    before = evaluate(config, str(compressed), work, f'test {name}')
    student = distill_config(cfg, dense['model'], dense['checkpoint'],
                             str(compressed), args.finetune_iters)
    finetuned = train(student, work / 'finetune', f'distill {name}')
    after = evaluate(config, finetuned, work, f'test {name} + FT')
    return dict(method=method, label=METHODS[method].label, budget=budget,
                knob=knob, setting=knob_text(method, knob, n,
                                             args.num_layers),
                compression=cfg.model.backbone.compression,
                flops=flops, target_flops=budget * dense['flops'],
                miou_before=before, miou_after=after, config=str(config),
                compressed=str(compressed), finetuned=finetuned)


# ---------------------------------------------------------------- stages
def train_dense(base: Config, args) -> dict:
    work = Path(args.work_dir) / 'dense'
    checkpoint = train(with_iters(base, args.dense_iters), work,
                       'train dense')
    config = work / 'config.py'
    model = build_segmentor(base)
    model.load_state_dict(checkpoint_state_dict(
        load_checkpoint_file(checkpoint)), strict=True)
    return dict(checkpoint=checkpoint, config=str(config),
                flops=flops_of(model, args.img_size),
                miou=evaluate(config, checkpoint, work, 'test dense'))


def score_tokens(base: Config, dense: dict, args) -> list:
    """Token scores of the dense model (one pass, shared by every PM
    variant)."""
    n = (args.img_size // base.model.backbone.patch_size) ** 2
    model = build_segmentor(compressed_config(base, compression_for(
        'pm-row', 1, args.num_layers, n)))
    load_dense(model, checkpoint_state_dict(
        load_checkpoint_file(dense['checkpoint'])))
    return token_scores_from_config(model, base, args.score_iters, 0.0,
                                    args.seed).tolist()


def measure_speed(dense: dict, rows: list, args) -> dict:
    """images/s at batch 1 of the dense and every fine-tuned model, the
    models taking turns (mmseg_pm.benchmark.time_interleaved) so that load
    from other jobs hits them alike; the median call counts."""
    models = {'dense': demo.build_model(Path(dense['config']),
                                        dense['checkpoint'], 'cpu')}
    for row in rows:
        models[row['name']] = demo.build_model(Path(row['config']),
                                               row['finetuned'], 'cpu')
    x = torch.rand(1, 3, args.img_size, args.img_size)

    def forward(model):
        with torch.inference_mode():
            return model(x, mode='tensor')

    seconds = time_interleaved(
        {name: (lambda m=m: forward(m)) for name, m in models.items()},
        warmup=5, repeats=args.speed_repeats)
    return {name: summarise(t, 1)['images_per_s']
            for name, t in seconds.items()}


def merge_windows(row: dict):
    """Window statistics of a Prune-and-Merge-family row's structures (as
    searched, before fine-tuning), None for input-dependent methods."""
    if METHODS[row['method']].family != 'pm':
        return None
    model = demo.build_model(Path(row['config']), row['compressed'], 'cpu')
    return window_stats(model.backbone.structures())


def summary_lines(dense: dict, rows: list, args) -> list:
    lines = [f'Dense Segmenter (the headroom): {dense["miou"]:.2f} mIoU at '
             f'{dense["flops"] / 1e9:.4f} GFLOPs.']
    for budget, row in sorted(best_per_budget(rows).items(), reverse=True):
        lines.append(
            f'Best at {100 * budget:.0f}% after fine-tuning: {row["label"]} '
            f'({row["setting"]}), {row["miou_after"]:.2f} mIoU '
            f'({row["miou_after"] - dense["miou"]:+.2f} vs dense), '
            f'{row["gflops"]:.4f} GFLOPs.')
    for budget, row in sorted(best_per_budget(rows, 'miou_before').items(),
                              reverse=True):
        lines.append(
            f'Best at {100 * budget:.0f}% without fine-tuning: '
            f'{row["label"]}, {row["miou_before"]:.2f} mIoU.')
    return lines


def setup_note(data: dict, base: Config, args, stages: list,
               total_s: float) -> str:
    b = base.model.backbone
    grid = args.img_size // b.patch_size
    threads = torch.get_num_threads()
    d = Config.fromfile(str(DISTILL_CONFIG))  # what distill_config() uses
    opt = d.optim_wrapper.optimizer
    compute = sum(s['seconds'] for s in stages)
    loads = [s['load_average'] for s in stages]
    reused = sum(s['reused'] for s in stages)
    return (
        f'{PROXY_NOTE} Data: {data["num_train"]} training and '
        f'{data["num_val"]} validation images of {args.img_size}x'
        f'{args.img_size} px (seed {args.seed}). Model: Segmenter with '
        f'{args.num_layers} blocks, {b.embed_dims} channels, patch '
        f'{b.patch_size} ({grid}x{grid} tokens), mask-transformer decoder '
        f'(1 layer, 150 ADE classes); dense training {args.dense_iters} iters'
        f' at batch {args.batch_size}. Every compressed model: calibrated to '
        f'within {100 * args.tolerance:.0f}% of the budget, then '
        f'{args.finetune_iters} iterations of distillation from the dense '
        f'model (CE + KL, alpha {d.model.distill_alpha:g}, T '
        f'{d.model.distill_temperature:g}, {opt.type} lr {opt.lr:g}; same '
        'seed and data order for all). mIoU: mmseg IoUMetric on the '
        'validation split, whole-image inference. GFLOPs: count_flops of '
        'encoder + decoder at batch 1. images/s: batch 1, every model '
        f'interleaved on the same machine ({os.cpu_count()} CPU cores, torch '
        f'{torch.__version__}, {threads} torch thread'
        f'{"s" if threads > 1 else ""}). Compute time of all stages '
        f'{compute / 60:.0f} min ({total_s / 60:.0f} min in the last run, '
        f'which reused {reused} cached stages); 1-min load average '
        f'{min(loads):.1f} to {max(loads):.1f} at the stages\' ends (other '
        'jobs shared the cores).')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Quality of every token-compression method at matched '
        'GFLOPs on synthetic ADE20K-format data')
    parser.add_argument('--work-dir', default='work_dirs/study')
    parser.add_argument('--out-dir', default='benchmarks/study')
    parser.add_argument('--data-root',
                        help='synthetic data (default: WORK_DIR/data)')
    parser.add_argument('--budgets', type=float, nargs='+',
                        default=[0.7, 0.5],
                        help='fractions of the dense GFLOPs')
    parser.add_argument('--methods', nargs='+', choices=list(METHODS),
                        default=DEFAULT_METHODS)
    parser.add_argument('--dense-iters', type=int, default=600)
    parser.add_argument('--finetune-iters', type=int, default=60)
    parser.add_argument('--score-iters', type=int, default=20)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--img-size', type=int, default=96,
                        help='square images = crops (patch 8)')
    parser.add_argument('--num-layers', type=int, default=8)
    parser.add_argument('--num-train', type=int, default=400)
    parser.add_argument('--num-val', type=int, default=100)
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--prune-rate', type=float, default=0.0,
                        help='Prune-and-Merge prune rate (fixed; keep_rate '
                        'is calibrated)')
    parser.add_argument('--tolerance', type=float, default=0.02,
                        help='largest relative miss of the GFLOPs target')
    parser.add_argument('--speed-repeats', type=int, default=60,
                        help='timed batch-1 forwards per model (median)')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch CPU threads (1: on shared cores more '
                        'threads contend and run far slower)')
    parser.add_argument('--fresh', action='store_true',
                        help='recompute cached stages')
    args = parser.parse_args(argv)
    for name in ('dense_iters', 'finetune_iters', 'score_iters', 'num_train',
                 'num_val', 'batch_size', 'speed_repeats', 'threads'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1')
    if args.img_size % 8:
        parser.error('--img-size must be a multiple of the patch size 8')
    if args.num_layers < 2:
        parser.error('--num-layers must be >= 2 (block 0 stays dense)')
    if any(not 0 < b < 1 for b in args.budgets):
        parser.error('--budgets must lie in (0, 1)')
    if not 0 <= args.prune_rate < 1 or not 0 < args.tolerance < 1:
        parser.error('need 0 <= --prune-rate < 1 and 0 < --tolerance < 1')
    args.budgets = sorted(set(args.budgets), reverse=True)
    if args.data_root is None:
        args.data_root = str(Path(args.work_dir) / 'data')
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    warnings.filterwarnings('ignore', category=UserWarning, module='mmseg')
    warnings.filterwarnings('ignore', category=UserWarning,
                            module='mmengine')
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    load = dict(start=os.getloadavg()[0])
    work, out = Path(args.work_dir), Path(args.out_dir)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    print(f'[1/5] synthetic ADE20K-format data in {args.data_root} '
          f'(load average {load["start"]:.1f})')
    data = make_synthetic_ade(args.data_root, args.num_train, args.num_val,
                              (args.img_size, args.img_size), args.seed,
                              progress=True)
    base = study_config(args)
    settings = {k: v for k, v in vars(args).items()
                if k not in ('work_dir', 'out_dir', 'fresh', 'methods',
                             'budgets', 'speed_repeats', 'threads')}
    dense_stamp = {k: settings[k] for k in (
        'data_root', 'dense_iters', 'seed', 'img_size', 'num_layers',
        'num_train', 'num_val', 'batch_size')}

    print(f'[2/5] dense Segmenter: train {args.dense_iters} iters, evaluate')
    stages = []
    dense, record = cached(work / 'dense.json', dense_stamp,
                           lambda: train_dense(base, args), args.fresh)
    stages.append(dict(record, stage='dense'))
    dense['model'] = base.model.to_dict()
    print(f'      dense: {dense["miou"]:.2f} mIoU, '
          f'{dense["flops"] / 1e9:.4f} GFLOPs')

    print(f'[3/5] token scores ({args.score_iters} batches)')
    scores, record = cached(
        work / 'scores.json', dict(dense_stamp, score_iters=args.score_iters),
        lambda: score_tokens(base, dense, args), args.fresh)
    scores = torch.tensor(scores)
    stages.append(dict(record, stage='scores'))

    variants = [(m, b) for b in args.budgets for m in args.methods]
    print(f'[4/5] {len(variants)} compressed models: calibrate, evaluate, '
          f'distil {args.finetune_iters} iters, evaluate')
    rows, skipped = [], []
    for i, (method, budget) in enumerate(variants, 1):
        name = f'{method}_{round(100 * budget)}'
        print(f'  ({i}/{len(variants)}) {METHODS[method].label} at '
              f'{100 * budget:.0f}% of the dense GFLOPs')
        try:
            row, record = cached(
                work / 'variants' / name / 'result.json',
                dict(settings, method=method, budget=budget),
                partial(run_variant, method, budget, base, dense, scores,
                        args), args.fresh)
            stages.append(dict(record, stage=name))
        except CalibrationError as err:
            print(f'      skipped: {err}')
            skipped.append(dict(method=method, budget=budget,
                                reason=str(err)))
            continue
        rows.append(dict(row, name=name, gflops=row['flops'] / 1e9,
                         fraction=row['flops'] / dense['flops']))
        print(f'      {row["setting"]}: {row["flops"] / 1e9:.4f} GFLOPs, '
              f'mIoU {row["miou_before"]:.2f} -> {row["miou_after"]:.2f}')

    print('[5/5] images/s side by side (batch 1), table, plot')
    measure_start = time.perf_counter()
    speed = measure_speed(dense, rows, args)
    load['end'] = os.getloadavg()[0]
    stages.append(dict(stage='images/s', reused=False,
                       seconds=time.perf_counter() - measure_start,
                       load_average=load['end']))
    dense_row = dict(method='dense', budget=None, setting='no compression',
                     gflops=dense['flops'] / 1e9, fraction=1.0,
                     miou_before=dense['miou'], miou_after=None,
                     images_per_s=speed['dense'])
    for row in rows:
        row['images_per_s'] = speed[row['name']]
        row['windows'] = merge_windows(row)
    total_s = time.perf_counter() - start
    note = setup_note(data, base, args, stages, total_s)
    summary = summary_lines(dense, rows, args)
    table = format_table([dense_row] + rows)
    grid = args.img_size // base.model.backbone.patch_size
    plot = out / 'miou_vs_gflops.png'
    plot_study(rows, dict(gflops=dense['flops'] / 1e9, miou=dense['miou']),
               plot, 'Token compression at matched GFLOPs (synthetic '
               'ADE20K-format proxy, not ADE20K)',
               note=f'{args.img_size}x{args.img_size} px, '
               f'{args.num_layers}-block Segmenter, '
               f'{args.finetune_iters}-iteration distillation; see table.md.')
    result = dict(note=note, summary=summary, dense=dict(
        miou=dense['miou'], gflops=dense['flops'] / 1e9,
        images_per_s=speed['dense'], checkpoint=dense['checkpoint']),
        rows=rows, skipped=skipped, settings=vars(args), load_average=load,
        machine=dict(cpu_count=os.cpu_count(), platform=platform.platform(),
                     torch=torch.__version__),
        stages=stages, total_s=total_s, plot=str(plot))
    demo.write_atomic(out / 'results.json',
                      json.dumps(result, indent=2, default=str) + '\n')
    demo.write_atomic(out / 'table.md', '\n'.join([
        '# Token compression at matched GFLOPs (synthetic proxy)', '',
        format_markdown([dense_row] + rows), *[f'- {s}' for s in summary],
        '', f'Merge windows of the static structures ({grid}x{grid} = '
        f'{grid * grid} tokens; how far merged tokens sit from their '
        'centre):', '',
        format_windows_markdown(rows),
        '', note, '', '![mIoU against GFLOPs](miou_vs_gflops.png)', '']))
    print()
    print(table)
    print()
    print('\n'.join(summary + [f'skipped: {s["method"]} at '
                               f'{100 * s["budget"]:.0f}%' for s in skipped]))
    print()
    print(note)
    print(f'outputs: {out}/table.md, results.json, miou_vs_gflops.png')
    return result


if __name__ == '__main__':
    main()
