"""The whole Prune-and-Merge pipeline on the built-in synthetic data, on CPU.

One command: make the synthetic ADE20K-format data set, train a tiny dense
Segmenter, score its tokens, prune and merge, fine-tune with distillation
from the dense model, evaluate dense and compressed models with mmseg's
IoUMetric, and print one table (mIoU, GFLOPs, images/s, tokens per block).
It runs the project's own tools (train.py, prune.py, test.py) in-process.

Example::

    python tools/demo.py                      # a few minutes on 2 CPU cores
    python tools/demo.py --keep-rate 0.3 --prune-rate 0.2 --work-dir work_dirs/demo_03

Outputs (under --work-dir, default work_dirs/demo): dense/ and distill/
(training work dirs and checkpoints), pruned.pth and prune.log,
merge_windows.png (the structures drawn on a validation image),
results.json and results.md (the table).
"""
import argparse
import contextlib
import io
import json
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import mmseg_pm  # noqa: E402,F401  (registers modules and the mmseg:: scope)
import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from tqdm import tqdm  # noqa: E402

from mmseg_pm.benchmark import time_interleaved, tokens_per_layer  # noqa: E402,E501
from mmseg_pm.benchmark.measure import summarise  # noqa: E402
from mmseg_pm.cli import load_tool  # noqa: E402
from mmseg_pm.datasets import make_synthetic_ade  # noqa: E402
from mmseg_pm.apis import (check_runner_checkpoint,  # noqa: E402
                           load_checkpoint_into, write_atomic)
from mmseg_pm.utils import count_flops  # noqa: E402

DENSE_CONFIG = REPO / 'configs/synthetic/segmenter_vit-tiny_mask_synthetic-ade-64x64.py'  # noqa: E501
PM_CONFIG = REPO / 'configs/synthetic/pm-segmenter_vit-tiny_mask_synthetic-ade-64x64.py'  # noqa: E501
DISTILL_CONFIG = REPO / 'configs/distill/distill-pm-segmenter_vit-tiny_mask_synthetic-ade-64x64.py'  # noqa: E501



class ProgressHook(Hook):
    """A tqdm bar over training iterations or test batches."""

    priority = 'VERY_LOW'

    def __init__(self, desc: str):
        self.desc = desc
        self.bar = None

    def before_train(self, runner):
        self.bar = tqdm(total=runner.max_iters - runner.iter, desc=self.desc,
                        unit='it', dynamic_ncols=True)

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        self.bar.update(1)
        if outputs and 'loss' in outputs:
            loss = torch.as_tensor(outputs['loss']).detach()
            self.bar.set_postfix(loss=f'{float(loss):.3f}')

    def after_train(self, runner):
        self.bar.close()

    def before_test_epoch(self, runner):
        self.bar = tqdm(total=len(runner.test_dataloader), desc=self.desc,
                        unit='img', dynamic_ncols=True)

    def after_test_iter(self, runner, batch_idx, data_batch=None,
                        outputs=None):
        self.bar.update(1)

    def after_test_epoch(self, runner, metrics=None):
        self.bar.close()


def data_options(root: str) -> list:
    return [f'{split}_dataloader.dataset.data_root={root}'
            for split in ('train', 'val', 'test')]


def run_tool(tool, argv, desc: str, mode: str):
    """Build a Runner the way the tool's main() does, quietly (the full
    log goes to the work dir), with a progress bar; run train or test."""
    args = tool.build_parser().parse_args(argv)
    cfg = tool.prepare_config(args)
    cfg.log_level = 'WARNING'
    if mode == 'train':  # the demo evaluates separately with test.py
        cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    runner = tool.build_runner(cfg)
    check_runner_checkpoint(runner, 'most' if mode == 'train' else 'all')
    runner.register_hook(ProgressHook(desc))
    return runner.train() if mode == 'train' else runner.test()


def build_model(config: Path, checkpoint: str, device: str):
    cfg = Config.fromfile(str(config))
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    model = MODELS.build(cfg.model)
    load_checkpoint_into(model, checkpoint)
    return model.to(device).eval()


@torch.no_grad()
def images_per_second(models: dict, img_size, device: str, batch_size: int,
                      repeats: int = 10) -> dict:
    """Median images/s of forwards of ``batch_size`` crops, the models
    taking turns (the CPU is shared), as tools/benchmark.py measures."""
    x = torch.randn(batch_size, 3, *img_size, device=device)
    calls = {name: (lambda m=m: m(x, mode='tensor'))
             for name, m in models.items()}
    seconds = time_interleaved(calls, warmup=3, repeats=repeats,
                               device=device)
    return {name: summarise(t, batch_size)['images_per_s']
            for name, t in seconds.items()}


def format_table(rows: list) -> str:
    header = ('model', 'mIoU', 'GFLOPs', 'images/s', 'tokens per block')
    body = [(r['model'], f'{r["mIoU"]:.2f}', f'{r["gflops"]:.4f}',
             f'{r["images_per_s"]:.0f}',
             ' / '.join(str(t) for t in r['tokens_per_block']))
            for r in rows]
    widths = [max(len(x[i]) for x in [header] + body)
              for i in range(len(header))]

    def line(cells):
        return '  '.join(c.ljust(wd) if i in (0, 4) else c.rjust(wd)
                         for i, (c, wd) in enumerate(zip(cells, widths)))

    sep = '  '.join('-' * wd for wd in widths)
    return '\n'.join([line(header), sep] + [line(b) for b in body])


def format_markdown(rows: list, note: str) -> str:
    lines = ['| model | mIoU | GFLOPs | images/s | tokens per block |',
             '|---|---:|---:|---:|---|']
    for r in rows:
        lines.append(f'| {r["model"]} | {r["mIoU"]:.2f} | '
                     f'{r["gflops"]:.4f} | {r["images_per_s"]:.0f} | '
                     f'{" / ".join(str(t) for t in r["tokens_per_block"])} |')
    return '\n'.join(lines) + f'\n\n{note}\n'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Prune-and-Merge demo on synthetic ADE20K-format data')
    parser.add_argument('--data-root', default='data/synthetic_ade')
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--train-iters', type=int, default=400,
                        help='dense training iterations (batch 8)')
    parser.add_argument('--distill-iters', type=int, default=200,
                        help='distillation fine-tuning iterations')
    parser.add_argument('--score-iters', type=int, default=20,
                        help='training batches used for token scores')
    parser.add_argument('--keep-rate', type=float, default=0.5)
    parser.add_argument('--prune-rate', type=float, default=0.1)
    parser.add_argument('--mode', choices=('global', 'layer'),
                        default='global', help='structure search ranking')
    parser.add_argument('--rule', choices=('row', 'nearest'), default='row')
    parser.add_argument('--bench-batch', type=int, default=16,
                        help='batch size of the images/s measurement')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch CPU threads (default 1: the tiny model '
                        'gains little from more, and on a shared CPU more '
                        'threads can be many times slower)')
    parser.add_argument('--device', choices=('cpu', 'cuda'),
                        default='cuda' if torch.cuda.is_available() else
                        'cpu')
    args = parser.parse_args(argv)
    for name in ('train_iters', 'distill_iters', 'score_iters', 'bench_batch',
                 'threads'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1')
    if not 0 < args.keep_rate <= 1 or not 0 <= args.prune_rate < 1 or \
            args.keep_rate + args.prune_rate > 1:
        parser.error('need 0 < --keep-rate <= 1, 0 <= --prune-rate < 1 and '
                     'keep + prune <= 1')
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings('ignore', category=UserWarning, module='mmseg')
    warnings.filterwarnings('ignore', category=UserWarning, module='mmengine')
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    train_tool, test_tool, prune_tool, visualize_tool = (
        load_tool(n) for n in ('train', 'test', 'prune', 'visualize_tokens'))
    timings = {}
    start = time.perf_counter()

    print(f'[1/6] synthetic ADE20K-format data in {args.data_root}')
    data = make_synthetic_ade(args.data_root, progress=True)
    root = data['root']
    timings['data_s'] = time.perf_counter() - start

    print(f'[2/6] train the dense tiny Segmenter ({args.train_iters} iters)')
    t = time.perf_counter()
    n = args.train_iters
    run_tool(train_tool, [
        str(DENSE_CONFIG), '--work-dir', str(work / 'dense'),
        '--cfg-options', *data_options(root), f'train_cfg.max_iters={n}',
        f'param_scheduler.0.end={n}', f'default_hooks.checkpoint.interval={n}'
    ], 'train dense', 'train')
    dense_ckpt = str(work / 'dense' / f'iter_{n}.pth')
    timings['train_dense_s'] = time.perf_counter() - t

    print(f'[3/6] score tokens ({args.score_iters} batches), prune and merge')
    t = time.perf_counter()
    pruned_ckpt = str(work / 'pruned.pth')
    prune_log = io.StringIO()
    with contextlib.redirect_stdout(prune_log):
        summary = prune_tool.main([
            str(PM_CONFIG), dense_ckpt, '--out', pruned_ckpt, '--force',
            '--iters', str(args.score_iters), '--keep-rate',
            str(args.keep_rate), '--prune-rate', str(args.prune_rate),
            '--mode', args.mode, '--rule', args.rule, '--device',
            args.device, '--cfg-options', *data_options(root)
        ])
    write_atomic(work / 'prune.log', prune_log.getvalue())
    timings['prune_s'] = time.perf_counter() - t

    print(f'[4/6] distillation fine-tuning ({args.distill_iters} iters)')
    t = time.perf_counter()
    n = args.distill_iters
    run_tool(train_tool, [
        str(DISTILL_CONFIG), '--work-dir', str(work / 'distill'),
        '--cfg-options', *data_options(root), f'load_from={pruned_ckpt}',
        f'model.teacher_checkpoint={dense_ckpt}', f'train_cfg.max_iters={n}',
        f'param_scheduler.0.end={n}', f'default_hooks.checkpoint.interval={n}'
    ], 'distill', 'train')
    distilled_ckpt = str(work / 'distill' / f'iter_{n}.pth')
    timings['distill_s'] = time.perf_counter() - t

    print('[5/6] evaluate with mmseg IoUMetric (tools/test.py)')
    t = time.perf_counter()
    variants = [('dense', DENSE_CONFIG, dense_ckpt),
                ('pruned, no fine-tuning', PM_CONFIG, pruned_ckpt),
                ('pruned + distilled', PM_CONFIG, distilled_ckpt)]
    metrics = {}
    for name, config, ckpt in variants:
        metrics[name] = run_tool(test_tool, [
            str(config), ckpt, '--work-dir', str(work / 'test'),
            '--cfg-options', *data_options(root)
        ], f'test {name}', 'test')
    timings['test_s'] = time.perf_counter() - t

    print('[6/6] GFLOPs, images/s and the picture of the merge windows')
    t = time.perf_counter()
    models = {name: build_model(config, ckpt, args.device)
              for name, config, ckpt in variants}
    img_size = tuple(models['dense'].backbone.img_size)
    x = torch.zeros(1, 3, *img_size, device=args.device)
    flops = {name: count_flops(m, x, mode='tensor')
             for name, m in models.items()}
    speed = images_per_second(models, img_size, args.device,
                              args.bench_batch)
    backbone = models['pruned + distilled'].backbone
    grid = tuple(backbone.grid_size)
    val_image = sorted(Path(data['validation_img_dir']).glob('*.jpg'))[0]
    picture = work / 'merge_windows.png'
    with contextlib.redirect_stdout(prune_log):  # tools/visualize_tokens.py
        visualize_tool.main([str(PM_CONFIG), pruned_ckpt, str(val_image),
                             '--out', str(picture), '--force', '--dpi',
                             '90'])
    write_atomic(work / 'prune.log', prune_log.getvalue())
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
            f'tokens); keep_rate {args.keep_rate}, prune_rate '
            f'{args.prune_rate}, {args.mode} ranking, {args.rule} rule. '
            'GFLOPs: one crop; images/s: batches of '
            f'{args.bench_batch} crops, median of 10 interleaved runs, device '
            f'{args.device}, {args.threads} thread(s); tokens per block '
            'include the class token. '
            f'Total time {timings["total_s"]:.0f} s.')
    table = format_table(rows)
    result = dict(rows=rows, settings=vars(args), timings_s=timings,
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


if __name__ == '__main__':
    main()
