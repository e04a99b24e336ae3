"""The quality study's pipeline (its command line: ``mmseg_pm.cli.study``,
whose docstring lists the stages): the study's config, training and
evaluation through :mod:`mmseg_pm.apis`, FLOPs calibration of every method,
cached stages, the speed measurement and the report. :func:`run_study`
returns what it writes to ``results.json``; the method definitions and the
pure pieces are in :mod:`mmseg_pm.study`."""
import copy
import dataclasses
import hashlib
import json
import os
import platform
import time
from functools import partial
from pathlib import Path
from typing import Optional

import torch
from mmengine.config import Config

from mmseg_pm.apis import (build_segmentor, crop_flops, evaluation_config,
                           init_segmentor, token_scores_from_config,
                           train_config)
from mmseg_pm.apis.calibration import (CalibrationError, calibrate_knob,
                                       check_within)
from mmseg_pm.apis.config import (DENSE_CONFIG, DISTILL_CONFIG,
                                  scaled_schedule, write_config)
from mmseg_pm.apis.knobs import METHODS, compression_for, knob_range, knob_text
from mmseg_pm.apis.prune import default_ranking
from mmseg_pm.apis.runner import run_quietly
from mmseg_pm.apis.timing import images_per_second
from mmseg_pm.compression import search_structures
from mmseg_pm.datasets import make_synthetic_ade
from mmseg_pm.models.checkpoint import load_checkpoint_into
from mmseg_pm.utils.checkpoint import (checkpoint_state_dict,
                                       load_checkpoint_file,
                                       save_checkpoint_atomic)
from mmseg_pm.utils.outputs import write_atomic
from mmseg_pm.visualization import record_source_maps
from .settings import StudySettings
from .report import (best_per_budget, dense_row, format_markdown,
                     format_table, format_windows_markdown, plot_study)
from .windows import image_window_stats, window_stats

PROXY_NOTE = ('A small proxy, not ADE20K: synthetic ADE20K-format scenes and '
              'a tiny Segmenter trained from scratch on CPU; the numbers '
              'rank the methods on this proxy only.')


# ---------------------------------------------------------------- configs
def _pipeline_step(pipeline, kind: str, config=DENSE_CONFIG) -> dict:
    steps = [s for s in pipeline if s['type'] == kind]
    if len(steps) != 1:
        raise ValueError(f'{config} should have one {kind} step in '
                         f'its pipeline, found {len(steps)}')
    return steps[0]


def study_config(settings) -> Config:
    """The synthetic dense config at the study's size: crops = whole
    images (``img_size`` square), ``num_layers`` blocks, whole-image
    inference, the study's data root, batch size and seed."""
    cfg = Config.fromfile(str(DENSE_CONFIG))
    size = (settings.img_size, settings.img_size)
    cfg.crop_size = size
    cfg.model.data_preprocessor.size = size
    cfg.data_preprocessor.size = size
    cfg.model.backbone.img_size = size
    cfg.model.backbone.num_layers = settings.num_layers
    cfg.model.test_cfg = dict(mode='whole')
    train = cfg.train_dataloader.dataset.pipeline
    # zoom in by up to 1.5x, never out: crops are always full of image
    _pipeline_step(train, 'RandomResize').update(scale=size,
                                                 ratio_range=(1.0, 1.5))
    _pipeline_step(train, 'RandomCrop')['crop_size'] = size
    _pipeline_step(cfg.test_dataloader.dataset.pipeline,
                   'Resize')['scale'] = size
    for split in ('train', 'val', 'test'):
        cfg[f'{split}_dataloader'].dataset.data_root = str(settings.data_root)
    cfg.val_dataloader = cfg.test_dataloader
    cfg.train_dataloader.batch_size = settings.batch_size
    cfg.randomness = dict(seed=settings.seed)
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


DISTILL_MODEL_KEYS = ('distill_alpha', 'distill_temperature')


def distill_recipe() -> dict:
    """What the study takes from DISTILL_CONFIG: the distillation loss's
    settings, the optimizer, the schedule and the zoom range of the
    training crops (also the fine-tune's cache stamp, so that a changed
    recipe fine-tunes again)."""
    settings = Config.fromfile(str(DISTILL_CONFIG))
    resize = _pipeline_step(settings.train_dataloader.dataset.pipeline,
                            'RandomResize', DISTILL_CONFIG)
    return dict(
        resize_ratio=list(resize['ratio_range']),
        model={k: settings.model[k] for k in DISTILL_MODEL_KEYS},
        optim_wrapper=settings.optim_wrapper.to_dict(),
        param_scheduler=[dict(s) for s in settings.param_scheduler],
        max_iters=settings.train_cfg.max_iters)


def distill_config(student: Config, teacher_model: dict, teacher_ckpt: str,
                   load_from: str, iters: int) -> Config:
    """The student's config as a DistillEncoderDecoder, with the project's
    distillation settings (:func:`distill_recipe`) and its schedule
    stretched to ``iters`` iterations."""
    recipe = distill_recipe()
    cfg = with_iters(student, iters)
    model = {k: v for k, v in cfg.model.items() if k != 'type'}
    cfg.model = dict(type='DistillEncoderDecoder',
                     teacher_config=copy.deepcopy(teacher_model),
                     teacher_checkpoint=str(teacher_ckpt),
                     **recipe['model'], **model)
    cfg.optim_wrapper = recipe['optim_wrapper']
    cfg.param_scheduler = scaled_schedule(recipe['param_scheduler'],
                                          recipe['max_iters'], iters)
    _pipeline_step(cfg.train_dataloader.dataset.pipeline, 'RandomResize'
                   )['ratio_range'] = tuple(recipe['resize_ratio'])
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
    write_atomic(path, json.dumps(
        dict(stamp=stamp, record=record, value=value), indent=1) + '\n')
    return value, dict(record, reused=False)


def settings_key(value) -> str:
    """A stable hash of a JSON-able value (key order does not count)."""
    text = json.dumps(value, sort_keys=True, separators=(',', ':'))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_shape(base: Config, settings):
    """(patch tokens, blocks, channels) of the study's model."""
    n = (settings.img_size // base.model.backbone.patch_size) ** 2
    return n, settings.num_layers, base.model.backbone.embed_dims


def structure_ranking(variant) -> str:
    """How a variant with structures shares centres among its units."""
    return variant.ranking or default_ranking(variant.option('mode'))


def variant_settings(method: str, base: Config, settings) -> dict:
    """What a variant's row is computed from besides the study's settings:
    the backbone's ``compression=`` at every value of its knob, each as the
    method's config class reads it (every default it leaves out written
    out), and for a method with structures where their centres go. A cached
    row is reused only while these are the same (:func:`run_study`)."""
    n, layers, width = model_shape(base, settings)
    variant = METHODS[method]
    low, high = knob_range(method, n, layers, width)
    compression = [dataclasses.asdict(variant.spec.config.from_dict(
        compression_for(method, knob, layers, n, settings.prune_rate,
                        embed_dims=width), layers))
        for knob in range(low, high + 1)]
    described = dict(method=variant.method, compression=compression)
    if variant.spec.structures:
        described.update(placement=variant.placement,
                         ranking=structure_ranking(variant))
    return described


# ---------------------------------------------------------------- models
def load_dense(model, state: dict) -> None:
    """Dense weights into a compressed model; only its reducer's own
    entries (structures, MSTM's zero-initialised coarse branch) may be
    missing from them."""
    reducer = model.backbone.reducer
    prefix = f'backbone.{reducer.state_dict_name}.' if reducer else None
    own = {k: v for k, v in model.state_dict().items()
           if prefix and k.startswith(prefix)}
    model.load_state_dict({**own, **state}, strict=True)


def train(cfg: Config, work_dir: Path, desc: str) -> str:
    """tools/train.py on ``cfg``; returns the final checkpoint."""
    config = write_config(cfg, work_dir / 'config.py')
    run_quietly(train_config(str(config), str(work_dir)), desc, 'train')
    checkpoint = work_dir / f'iter_{cfg.train_cfg.max_iters}.pth'
    if not checkpoint.is_file():
        raise RuntimeError(f'training wrote no {checkpoint}')
    return str(checkpoint)


def evaluate(config: Path, checkpoint: str, work_dir: Path, desc: str
             ) -> float:
    """mIoU (%) of tools/test.py (mmseg's IoUMetric) on the validation
    split."""
    metrics = run_quietly(evaluation_config(str(config), str(checkpoint),
                                      str(work_dir / 'test')), desc, 'test')
    return float(metrics['mIoU'])


def compress(method: str, budget: float, base: Config, dense_state: dict,
             dense_flops: int, scores, settings):
    """The method's model at the knob whose GFLOPs are nearest
    ``budget * dense_flops``; returns (model, config, knob, flops)."""
    n, layers, width = model_shape(base, settings)
    grid = (int(n ** 0.5), ) * 2
    variant = METHODS[method]
    spec = variant.spec

    def config_at(knob):
        return compressed_config(base, compression_for(
            method, knob, layers, n, settings.prune_rate, embed_dims=width))

    def structures_at(knob):
        config = spec.config.from_dict(
            compression_for(method, knob, layers, n, settings.prune_rate),
            layers)
        return search_structures(scores, config, grid,
                                 structure_ranking(variant),
                                 variant.placement, settings.seed)

    inputs = None
    if spec.structures:  # searched from the scores at every knob value
        model = build_segmentor(config_at(1))

        def flops_at(knob):
            model.backbone.set_structures(structures_at(knob))
            return crop_flops(model)
    elif not spec.fixed_shapes:  # counts follow the image and the weights
        def flops_at(knob):
            nonlocal inputs
            model = build_segmentor(config_at(knob))
            load_dense(model, dense_state)
            if inputs is None:
                inputs = validation_inputs(base, model)
            return mean_image_flops(model, inputs)
    else:
        def flops_at(knob):
            return crop_flops(build_segmentor(config_at(knob)))

    target = budget * dense_flops
    knob, flops = calibrate_knob(flops_at, *knob_range(method, n, layers,
                                                       width), target)
    if not spec.discrete:  # a schedule: its nearest setting, as it is
        check_within(method, flops, target, settings.tolerance)
    cfg = config_at(knob)
    model = build_segmentor(cfg)
    load_dense(model, dense_state)
    if spec.structures:
        model.backbone.set_structures(structures_at(knob))
    counted = crop_flops(model) if inputs is None else \
        mean_image_flops(model, inputs)
    if counted != flops:
        raise RuntimeError(f'{method}: the rebuilt model counts {counted} '
                           f'FLOPs, the calibration {flops}')
    return model, cfg, knob, flops


def validation_inputs(base: Config, model) -> list:
    """The validation images as ``model`` sees them after its data
    preprocessor, one (1, 3, H, W) tensor each (input-dependent methods'
    FLOPs are their mean over these)."""
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner

    init_default_scope('mmseg')
    cfg = copy.deepcopy(base.val_dataloader)
    cfg.batch_size = 1
    inputs = []
    with torch.no_grad():
        for batch in Runner.build_dataloader(cfg):
            inputs.append(model.data_preprocessor(batch, False)['inputs'])
    return inputs


def image_flops(model, inputs: list) -> list:
    """Counted FLOPs of the segmentor (encoder and decoder) on each input
    alone (batch 1)."""
    from mmseg_pm.utils.flops import count_flops

    model.eval()
    return [count_flops(model, x, mode='tensor') for x in inputs]


def mean_image_flops(model, inputs: list) -> float:
    flops = image_flops(model, inputs)
    return sum(flops) / len(flops)


def flops_spread(model, base: Config) -> dict:
    """Smallest and largest per-image FLOPs over the validation images of
    a model whose token counts depend on the image (its table FLOPs are
    their mean)."""
    flops = image_flops(model, validation_inputs(base, model))
    return dict(flops_min=min(flops), flops_max=max(flops))


def variant_name(method: str, budget: float) -> str:
    """A variant's folder under ``variants/``, e.g. ``res-content_70``."""
    return f'{method}_{round(100 * budget)}'


def run_variant(method: str, budget: float, base: Config, dense: dict,
                scores, settings) -> dict:
    """Calibrate and evaluate one method at one budget; returns its row
    before fine-tuning (without images/s; :func:`finetune_variant` adds
    the fine-tuned model)."""
    name = variant_name(method, budget)
    work = Path(settings.work_dir) / 'variants' / name
    dense_state = checkpoint_state_dict(
        load_checkpoint_file(dense['checkpoint']))
    model, cfg, knob, flops = compress(method, budget, base, dense_state,
                                       dense['flops'], scores, settings)
    config = write_config(cfg, work / 'config.py')
    compressed = work / 'compressed.pth'
    save_checkpoint_atomic(dict(state_dict={
        k: v.detach().cpu() for k, v in model.state_dict().items()}),
        str(compressed))
    spread = {} if METHODS[method].spec.fixed_shapes else \
        flops_spread(model, base)
    before = evaluate(config, str(compressed), work, f'test {name}')
    setting = knob_text(method, knob, *model_shape(base, settings))
    if spread:
        setting += (f'; GFLOPs per image {spread["flops_min"] / 1e9:.4f}-'
                    f'{spread["flops_max"] / 1e9:.4f}')
    return dict(method=method, label=METHODS[method].label, budget=budget,
                knob=knob, setting=setting, **spread,
                compression=cfg.model.backbone.compression,
                flops=flops, target_flops=budget * dense['flops'],
                miou_before=before, config=str(config),
                compressed=str(compressed))


def finetune_variant(row: dict, dense: dict, settings) -> dict:
    """Distil a row's compressed model with the project's recipe and
    evaluate it; returns ``miou_after`` and ``finetuned``."""
    name = variant_name(row['method'], row['budget'])
    work = Path(row['config']).parent
    cfg = Config.fromfile(row['config'])
    student = distill_config(cfg, dense['model'], dense['checkpoint'],
                             row['compressed'], settings.finetune_iters)
    finetuned = train(student, work / 'finetune', f'distill {name}')
    after = evaluate(Path(row['config']), finetuned, work,
                     f'test {name} + FT')
    return dict(miou_after=after, finetuned=finetuned)


# ---------------------------------------------------------------- stages
def train_dense(base: Config, settings) -> dict:
    work = Path(settings.work_dir) / 'dense'
    checkpoint = train(with_iters(base, settings.dense_iters), work,
                       'train dense')
    config = work / 'config.py'
    model = build_segmentor(base)
    load_checkpoint_into(model, checkpoint)
    return dict(checkpoint=checkpoint, config=str(config),
                flops=crop_flops(model),
                miou=evaluate(config, checkpoint, work, 'test dense'))


def score_tokens(base: Config, dense: dict, settings) -> list:
    """Token scores of the dense model (one pass, shared by every PM
    variant)."""
    n = (settings.img_size // base.model.backbone.patch_size) ** 2
    model = build_segmentor(compressed_config(base, compression_for(
        'pm-row', 1, settings.num_layers, n)))
    load_dense(model, checkpoint_state_dict(
        load_checkpoint_file(dense['checkpoint'])))
    return token_scores_from_config(model, base, settings.score_iters, 0.0,
                                    settings.seed).tolist()


def measure_speed(dense: dict, rows: list, settings, base=None) -> dict:
    """images/s at batch 1 of the dense and every fine-tuned model, the
    models taking turns so that load from other jobs hits them alike; the
    median call counts. The input is the first validation image when
    ``base`` (the study config) is given (ALGM merges by content: noise
    would leave it little to merge), else uniform noise."""
    models = {'dense': init_segmentor(dense['config'], dense['checkpoint'])}
    for row in rows:
        models[row['name']] = row_segmentor(row, row['finetuned'])
    size = settings.img_size
    x = torch.rand(1, 3, size, size) if base is None \
        else validation_inputs(base, models['dense'])[0]
    return images_per_second(models, x, warmup=5,
                             repeats=settings.speed_repeats)


def row_segmentor(row: dict, checkpoint: str):
    """A row's model with ``checkpoint``."""
    return init_segmentor(row['config'], checkpoint)


def merge_windows(row: dict, images) -> Optional[dict]:
    """Window statistics of a row's structures (as searched, before
    fine-tuning), None for a method without structures; content-aware
    windows: as the validation images formed them (``images(model)``: the
    validation images as one batch through the model's preprocessor)."""
    if not METHODS[row['method']].spec.structures:
        return None
    model = row_segmentor(row, row['compressed']).eval()
    backbone = model.backbone
    structures = backbone.structures()
    if not backbone.reducer.per_image_merges:
        return window_stats(structures)
    sources = record_source_maps(backbone, images(model))
    return image_window_stats(
        structures, [sources[first] for first, _ in backbone.reducer.units],
        backbone.reducer.num_prefix)


def summary_lines(dense: dict, rows: list, settings) -> list:
    lines = [f'Dense Segmenter (the headroom): {dense["miou"]:.2f} mIoU at '
             f'{dense["flops"] / 1e9:.4f} GFLOPs.']
    for budget, row in sorted(best_per_budget(
            rows, tolerance=settings.tolerance).items(), reverse=True):
        lines.append(
            f'Best at {100 * budget:.0f}% after fine-tuning: {row["label"]} '
            f'({row["setting"]}), {row["miou_after"]:.2f} mIoU '
            f'({row["miou_after"] - dense["miou"]:+.2f} vs dense), '
            f'{row["gflops"]:.4f} GFLOPs.')
    for budget, row in sorted(best_per_budget(
            rows, 'miou_before', settings.tolerance).items(), reverse=True):
        lines.append(
            f'Best at {100 * budget:.0f}% without fine-tuning: '
            f'{row["label"]}, {row["miou_before"]:.2f} mIoU.')
    return lines


def setup_note(data: dict, base: Config, settings, stages: list,
               total_s: float) -> str:
    b = base.model.backbone
    grid = settings.img_size // b.patch_size
    threads = torch.get_num_threads()
    recipe = distill_recipe()  # what distill_config() uses
    opt = recipe['optim_wrapper']['optimizer']
    warm = [s for s in recipe['param_scheduler'] if s['type'] == 'LinearLR']
    warm = (f' warmed up over the first '
            f'{100 * warm[0]["end"] / recipe["max_iters"]:.0f}%'
            if warm else '')
    zoom = recipe['resize_ratio']
    zoom = ('crops at the evaluation scale' if zoom == [1.0, 1.0] else
            f'crops zoomed {zoom[0]:g}-{zoom[1]:g}x')
    compute = sum(s['seconds'] for s in stages)
    loads = [s['load_average'] for s in stages]
    reused = sum(s['reused'] for s in stages)
    return (
        f'{PROXY_NOTE} Data: {data["num_train"]} training and '
        f'{data["num_val"]} validation images of {settings.img_size}x'
        f'{settings.img_size} px (seed {settings.seed}). Model: Segmenter '
        'with '
        f'{settings.num_layers} blocks, {b.embed_dims} channels, patch '
        f'{b.patch_size} ({grid}x{grid} tokens), mask-transformer decoder '
        '(1 layer, 150 ADE classes); dense training '
        f'{settings.dense_iters} iters at batch {settings.batch_size}. Every '
        'compressed model: calibrated to '
        f'within {100 * settings.tolerance:.0f}% of the budget, then '
        f'{settings.finetune_iters} iterations of distillation from the dense '
        f'model (CE + KL, alpha {recipe["model"]["distill_alpha"]:g}, T '
        f'{recipe["model"]["distill_temperature"]:g}, {opt["type"]} lr '
        f'{opt["lr"]:g}{warm}, {zoom}; same '
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


def run_study(settings: Optional[StudySettings] = None, **changes) -> dict:
    """The whole study with ``settings`` (default: tools/study.py's), any
    field changed by keyword (``run_study(img_size=64, methods=['tome'])``);
    returns what it writes to results.json."""
    settings = dataclasses.replace(settings, **changes) if settings else \
        StudySettings(**changes)
    start = time.perf_counter()
    load = dict(start=os.getloadavg()[0])
    work, out = Path(settings.work_dir), Path(settings.out_dir)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    print(f'[1/5] synthetic ADE20K-format data in {settings.data_root} '
          f'(load average {load["start"]:.1f})')
    data = make_synthetic_ade(settings.data_root, settings.num_train,
                              settings.num_val,
                              (settings.img_size, settings.img_size),
                              settings.seed,
                              progress=True)
    base = study_config(settings)
    stamp = settings.stamp()
    dense_stamp = {k: stamp[k] for k in (
        'data_root', 'dense_iters', 'seed', 'img_size', 'num_layers',
        'num_train', 'num_val', 'batch_size')}

    print(f'[2/5] dense Segmenter: train {settings.dense_iters} iters, '
          'evaluate')
    stages = []
    dense, record = cached(work / 'dense.json', dense_stamp,
                           lambda: train_dense(base, settings), settings.fresh)
    stages.append(dict(record, stage='dense'))
    dense['model'] = base.model.to_dict()
    print(f'      dense: {dense["miou"]:.2f} mIoU, '
          f'{dense["flops"] / 1e9:.4f} GFLOPs')

    print(f'[3/5] token scores ({settings.score_iters} batches)')
    scores, record = cached(
        work / 'scores.json',
        dict(dense_stamp, score_iters=settings.score_iters),
        lambda: score_tokens(base, dense, settings), settings.fresh)
    scores = torch.tensor(scores)
    stages.append(dict(record, stage='scores'))

    # as JSON reads it back (tuples as lists), to compare with the cache
    recipe = json.loads(json.dumps(distill_recipe()))
    variants = [(m, b) for b in settings.budgets for m in settings.methods]
    print(f'[4/5] {len(variants)} compressed models: calibrate, evaluate, '
          f'distil {settings.finetune_iters} iters, evaluate')
    rows, skipped = [], []
    for i, (method, budget) in enumerate(variants, 1):
        name = variant_name(method, budget)
        print(f'  ({i}/{len(variants)}) {METHODS[method].label} at '
              f'{100 * budget:.0f}% of the dense GFLOPs')
        # a changed variant (its compression at any knob, its centres)
        # computes its row again
        variant_stamp = dict(stamp, method=method, budget=budget,
                             variant=settings_key(variant_settings(
                                 method, base, settings)))
        try:
            row, record = cached(
                work / 'variants' / name / 'result.json', variant_stamp,
                partial(run_variant, method, budget, base, dense, scores,
                        settings), settings.fresh)
            stages.append(dict(record, stage=name))
        except CalibrationError as err:
            print(f'      skipped: {err}')
            skipped.append(dict(method=method, budget=budget,
                                reason=str(err)))
            continue
        # its own stamp: a changed recipe distils again, reusing the rest
        tuned, record = cached(
            work / 'variants' / name / 'finetune.json',
            dict(variant_stamp, recipe=recipe),
            partial(finetune_variant, row, dense, settings), settings.fresh)
        stages.append(dict(record, stage=f'{name} + FT'))
        row = dict(row, **tuned)
        rows.append(dict(row, name=name, label=METHODS[method].label,
                         gflops=row['flops'] / 1e9,
                         fraction=row['flops'] / dense['flops']))
        print(f'      {row["setting"]}: {row["flops"] / 1e9:.4f} GFLOPs, '
              f'mIoU {row["miou_before"]:.2f} -> {row["miou_after"]:.2f}')

    print('[5/5] images/s side by side (batch 1), table, plot')
    measure_start = time.perf_counter()
    speed = measure_speed(dense, rows, settings, base)
    load['end'] = os.getloadavg()[0]
    stages.append(dict(stage='images/s', reused=False,
                       seconds=time.perf_counter() - measure_start,
                       load_average=load['end']))
    dense_result = dict(miou=dense['miou'], gflops=dense['flops'] / 1e9,
                        images_per_s=speed['dense'],
                        checkpoint=dense['checkpoint'])
    loaded = []  # the validation images, read once for every row

    def validation_batch(model):
        if not loaded:
            loaded.append(torch.cat(validation_inputs(base, model)))
        return loaded[0]

    for row in rows:
        row['images_per_s'] = speed[row['name']]
        row['windows'] = merge_windows(row, validation_batch)
    total_s = time.perf_counter() - start
    note = setup_note(data, base, settings, stages, total_s)
    summary = summary_lines(dense, rows, settings)
    table_rows = [dense_row(dense_result)] + rows
    table = format_table(table_rows)
    grid = settings.img_size // base.model.backbone.patch_size
    plot = out / 'miou_vs_gflops.png'
    plot_study(rows, dict(gflops=dense['flops'] / 1e9, miou=dense['miou']),
               plot, 'Token compression at matched GFLOPs (synthetic '
               'ADE20K-format proxy, not ADE20K)',
               note=f'{settings.img_size}x{settings.img_size} px, '
               f'{settings.num_layers}-block Segmenter, '
               f'{settings.finetune_iters}-iteration distillation; see '
               'table.md.')
    result = dict(
        note=note, summary=summary, dense=dense_result, rows=rows,
        skipped=skipped, settings=dict(dataclasses.asdict(settings),
                                       threads=torch.get_num_threads()),
        load_average=load,
        machine=dict(cpu_count=os.cpu_count(), platform=platform.platform(),
                     torch=torch.__version__),
        stages=stages, total_s=total_s, plot=str(plot))
    write_atomic(out / 'results.json',
                      json.dumps(result, indent=2, default=str) + '\n')
    write_atomic(out / 'table.md', '\n'.join([
        '# Token compression at matched GFLOPs (synthetic proxy)', '',
        format_markdown(table_rows), *[f'- {s}' for s in summary],
        '', f'Merge windows ({grid}x{grid} = {grid * grid} tokens; how far '
        'merged tokens sit from their centre; content-aware rows: the '
        'windows the validation images formed, over all images and '
        'units):', '',
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


