"""The whole Prune-and-Merge pipeline on the built-in synthetic data, on CPU.

One command: make the synthetic ADE20K-format data set, train a tiny dense
Segmenter, score its tokens, prune and merge, fine-tune with distillation
from the dense model, evaluate dense and compressed models with mmseg's
IoUMetric, and print one table (mIoU, GFLOPs, images/s, tokens per block).
The residual reconstruction (the default) is shown next to the authors'
pinv at the same structure (docs/residual.md). It runs the project's own
tools (train.py, prune.py, test.py) in-process.

Example::

    python tools/demo.py                      # a few minutes on 2 CPU cores
    python tools/demo.py --keep-rate 0.5 --layers 1 2 3 --work-dir work_dirs/demo_05

Outputs (under --work-dir, default work_dirs/demo): dense/ and distill/
(training work dirs and checkpoints), pruned.pth (and pruned_pinv.pth),
the configs they were made with, prune.log,
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
from mmseg_pm.cli import load_tool, write_config  # noqa: E402
from mmseg_pm.compression import (DEFAULT_PLACEMENT,  # noqa: E402
                                  PLACEMENTS, RECONSTRUCTS)
from mmseg_pm.datasets import make_synthetic_ade  # noqa: E402
from mmseg_pm.utils import (checkpoint_state_dict, count_flops,  # noqa: E402
                            load_checkpoint_file)

DENSE_CONFIG = REPO / 'configs/synthetic/segmenter_vit-tiny_mask_synthetic-ade-64x64.py'  # noqa: E501
PM_CONFIG = REPO / 'configs/synthetic/pm-segmenter_vit-tiny_mask_synthetic-ade-64x64.py'  # noqa: E501
DISTILL_CONFIG = REPO / 'configs/distill/distill-pm-segmenter_vit-tiny_mask_synthetic-ade-64x64.py'  # noqa: E501
# The demo's compression: at least 30 % fewer GFLOPs than the dense model.
DEMO_LAYERS = [0, 1, 2, 3]
DEMO_KEEP_RATE = 0.3
DEMO_PRUNE_RATE = 0.1
DEMO_RULE = 'nearest'



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


def demo_config(source: Path, args, reconstruct: str, path: Path) -> Path:
    """``source`` with the demo's compression (blocks and reconstruction),
    written to ``path`` so that prune, test, distillation and the picture
    all read the same model."""
    cfg = Config.fromfile(str(source))
    cfg.model.backbone.compression.update(layers=list(args.layers),
                                          reconstruct=reconstruct)
    return write_config(cfg, path)


def prune_dense(prune_tool, config: Path, dense_ckpt: str, out: str, args,
                root: str, log: io.StringIO) -> dict:
    """tools/prune.py with the demo's settings; its table goes to ``log``."""
    with contextlib.redirect_stdout(log):
        return prune_tool.main([
            str(config), dense_ckpt, '--out', out, '--force',
            '--iters', str(args.score_iters), '--keep-rate',
            str(args.keep_rate), '--prune-rate', str(args.prune_rate),
            '--mode', args.mode, '--rule', args.rule, '--placement',
            args.placement, '--device', args.device,
            '--cfg-options', *data_options(root)
        ])


def run_tool(tool, argv, desc: str, mode: str):
    """Build a Runner the way the tool's main() does, quietly (the full
    log goes to the work dir), with a progress bar; run train or test."""
    args = tool.build_parser().parse_args(argv)
    cfg = tool.prepare_config(args)
    cfg.log_level = 'WARNING'
    if mode == 'train':  # the demo evaluates separately with test.py
        cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    runner = tool.build_runner(cfg)
    runner.register_hook(ProgressHook(desc))
    return runner.train() if mode == 'train' else runner.test()


def build_model(config: Path, checkpoint: str, device: str):
    cfg = Config.fromfile(str(config))
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    model = MODELS.build(cfg.model)
    model.load_state_dict(
        checkpoint_state_dict(load_checkpoint_file(checkpoint)), strict=True)
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


def format_table(rows: list) -> str:
    body = table_cells(rows)
    widths = [max(len(x[i]) for x in [HEADER] + body)
              for i in range(len(HEADER))]

    def line(cells):
        return '  '.join(c.ljust(wd) if i in (0, 6) else c.rjust(wd)
                         for i, (c, wd) in enumerate(zip(cells, widths)))

    sep = '  '.join('-' * wd for wd in widths)
    return '\n'.join([line(HEADER), sep] + [line(b) for b in table_cells(rows)])


def format_markdown(rows: list, note: str) -> str:
    lines = ['| ' + ' | '.join(HEADER) + ' |',
             '|---|---:|---:|---:|---:|---:|---|']
    lines += ['| ' + ' | '.join(cells) + ' |' for cells in table_cells(rows)]
    return '\n'.join(lines) + f'\n\n{note}\n'


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f'.{path.name}.tmp')
    tmp.write_text(text)
    tmp.replace(path)


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
    parser.add_argument('--keep-rate', type=float, default=DEMO_KEEP_RATE)
    parser.add_argument('--prune-rate', type=float, default=DEMO_PRUNE_RATE)
    parser.add_argument('--layers', type=int, nargs='+', default=DEMO_LAYERS,
                        help='compressed blocks of the 4-block model')
    parser.add_argument('--mode', choices=('global', 'layer'),
                        default='global', help='structure search ranking')
    parser.add_argument('--rule', choices=('row', 'nearest'),
                        default=DEMO_RULE)
    parser.add_argument('--placement', choices=PLACEMENTS,
                        default=DEFAULT_PLACEMENT,
                        help='where the centres go (see tools/prune.py)')
    parser.add_argument('--reconstruct', choices=RECONSTRUCTS,
                        default='residual',
                        help="residual (default) or the authors' pinv")
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
    pm_config = demo_config(PM_CONFIG, args, args.reconstruct,
                            work / 'pm_config.py')
    distill_config = demo_config(DISTILL_CONFIG, args, args.reconstruct,
                                 work / 'distill_config.py')
    t = time.perf_counter()
    pruned_ckpt = str(work / 'pruned.pth')
    prune_log = io.StringIO()
    summary = prune_dense(prune_tool, pm_config, dense_ckpt, pruned_ckpt,
                          args, root, prune_log)
    # The authors' reconstruction at the same settings, for comparison.
    compare_pinv = args.reconstruct != 'pinv'
    if compare_pinv:
        pinv_config = demo_config(PM_CONFIG, args, 'pinv',
                                  work / 'pm_pinv_config.py')
        pinv_ckpt = str(work / 'pruned_pinv.pth')
        prune_dense(prune_tool, pinv_config, dense_ckpt, pinv_ckpt, args,
                    root, prune_log)
    write_atomic(work / 'prune.log', prune_log.getvalue())
    timings['prune_s'] = time.perf_counter() - t

    print(f'[4/6] distillation fine-tuning ({args.distill_iters} iters)')
    t = time.perf_counter()
    n = args.distill_iters
    run_tool(train_tool, [
        str(distill_config), '--work-dir', str(work / 'distill'),
        '--cfg-options', *data_options(root), f'load_from={pruned_ckpt}',
        f'model.teacher_checkpoint={dense_ckpt}', f'train_cfg.max_iters={n}',
        f'param_scheduler.0.end={n}', f'default_hooks.checkpoint.interval={n}'
    ], 'distill', 'train')
    distilled_ckpt = str(work / 'distill' / f'iter_{n}.pth')
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
    backbone = models[variants[-1][0]].backbone
    grid = tuple(backbone.grid_size)
    val_image = sorted(Path(data['validation_img_dir']).glob('*.jpg'))[0]
    picture = work / 'merge_windows.png'
    with contextlib.redirect_stdout(prune_log):  # tools/visualize_tokens.py
        visualize_tool.main([str(pm_config), pruned_ckpt, str(val_image),
                             '--out', str(picture), '--dpi', '90'])
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
            f'tokens); blocks {args.layers} compressed, keep_rate '
            f'{args.keep_rate}, prune_rate {args.prune_rate}, {args.mode} '
            f'ranking, {args.placement} placement, {args.rule} rule, '
            f'{args.reconstruct} reconstruction. '
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
