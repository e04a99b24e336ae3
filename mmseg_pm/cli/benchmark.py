"""Benchmark dense and compressed Segmenters and their peers side by side.

Examples::

    # ViT-S Segmenter 512x512 on 2 CPU threads: mmseg's dense model, ours
    # with compression off, PM (residual and authors' pinv) at keep 0.7 /
    # 0.5, the peers at the same GFLOPs; PyTorch, onnxruntime and
    # torch.compile rows interleaved; operator profiles; input-size study
    python tools/benchmark.py \\
        configs/segmenter/pm-segmenter_vit-s_mask_8xb1-160k_ade20k-512x512.py \\
        --keep-rates 0.7 0.5 --threads 2 --profile --resolutions 512 640 1024

    # GPU: fp32 / bf16 / fp16, batch 1, 8 and 32 (onnxruntime rows: CPU only)
    python tools/benchmark.py \\
        configs/segmenter/pm-segmenter_vit-s_mask_8xb1-160k_ade20k-512x512.py \\
        --keep-rates 0.7 0.5 --device cuda --dtypes fp32 bf16 fp16 \\
        --batch-sizes 1 8 32 --repeats 20 --profile

Writes benchmarks/<name>.json, .md and .png (see docs/benchmark.md); what
is measured is :mod:`mmseg_pm.benchmark.pipeline`.
"""
import argparse
import os
from pathlib import Path
from typing import Optional, Sequence

# The CPU memory measurement uses torch's profiler; keep its log quiet.
os.environ.setdefault('KINETO_LOG_LEVEL', '5')

from mmseg_pm.utils.outputs import check_output_file  # noqa: E402
from mmseg_pm.benchmark.measure import DTYPES, PARTS  # noqa: E402
from mmseg_pm.benchmark.pipeline import default_name, run  # noqa: E402
from mmseg_pm.benchmark.report import result_paths, write_results  # noqa: E402,E501
from mmseg_pm.benchmark.tables import render_text  # noqa: E402
from mmseg_pm.benchmark.settings import BenchmarkSettings  # noqa: E402
from mmseg_pm.benchmark.variants import (PEER_VARIANTS,  # noqa: E402
                                         VARIANTS, parse_config_arg)
from mmseg_pm.cli import (CfgOptionsAction, defaults_of,  # noqa: E402
                          float_in, int_at_least, run_cli, set_process,
                          settings_from)


def build_parser() -> argparse.ArgumentParser:
    d = defaults_of(BenchmarkSettings)
    p = argparse.ArgumentParser(
        description='GFLOPs, parameters, images/s, latency and peak memory '
        'of dense and compressed Segmenters and their peers at the same '
        'GFLOPs, in PyTorch, onnxruntime and torch.compile, side by side',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('configs', nargs='*', metavar='CONFIG[:CHECKPOINT]',
                   help='mmseg config files, each with an '
                   'optional checkpoint whose weights every row of it uses '
                   '(none: only the --scaling rows)')
    p.add_argument('--variants', nargs='+', choices=VARIANTS,
                   default=list(d['variants']),
                   help="rows per config: mmseg's VisionTransformer, ours "
                   'with compression off, PM (residual reconstruct, sparse '
                   'merge, content-aware windows: the default), PM with '
                   "static windows, PM with the authors' pinv "
                   'reconstruct, PM with dense merge/reconstruct matrices, '
                   f'{", ".join(PEER_VARIANTS)} calibrated to the GFLOPs '
                   "of each pm row, the config's backbone as written")
    p.add_argument('--keep-rates', nargs='+', default=d['keep_rates'],
                   type=float_in(0, 1, low_open=True),
                   help="keep rates of the compressed rows (default: the "
                   "config's own, or 0.7 0.5); 1.0 = the dense rows")
    p.add_argument('--match-tolerance', type=float,
                   default=d['match_tolerance'],
                   help='largest relative GFLOPs miss of a peer against its '
                   'PM row; a peer that cannot get closer is reported as '
                   'a row that cannot reach it')
    p.add_argument('--backends', nargs='*',
                   choices=['onnx', 'compile', 'cudagraph'],
                   default=list(d['backends']),
                   help='besides PyTorch (eager): rows exported to ONNX and '
                   'run by onnxruntime (CPU execution provider, same thread '
                   "count), torch.compile rows, and torch.compile mode="
                   "'reduce-overhead' rows (replayed as CUDA graphs; CUDA "
                   'devices only); none: eager only')
    p.add_argument('--onnx-variants', nargs='+', choices=VARIANTS,
                   default=list(d['onnx_variants']),
                   help='rows exported to ONNX (those that fail say why)')
    p.add_argument('--compile-variants', nargs='+', choices=VARIANTS,
                   default=list(d['compile_variants']),
                   help='rows compiled')
    p.add_argument('--onnx-dir', default=d['onnx_dir'],
                   help='keep the exported ONNX files here (default: a '
                   'temporary folder, removed at the end)')
    p.add_argument('--parts', nargs='+', choices=PARTS,
                   default=list(d['parts']),
                   help='time the backbone alone and/or the segmentor '
                   "(backbone + decode head, mode='tensor')")
    p.add_argument('--batch-sizes', nargs='+', type=int_at_least(1),
                   default=list(d['batch_sizes']))
    p.add_argument('--device', default=d['device'], help="'cpu' or 'cuda[:i]'")
    p.add_argument('--dtypes', nargs='+', choices=list(DTYPES),
                   default=list(d['dtypes']),
                   help='fp32, or autocast to bf16 / fp16 (GPU; bf16 works '
                   'on CPU too); onnxruntime rows are fp32 only')
    p.add_argument('--threads', type=int_at_least(1), default=None,
                   help='torch and onnxruntime intra-op threads (default: '
                   "torch's)")
    p.add_argument('--warmup', type=int_at_least(0), default=d['warmup'],
                   help='untimed calls per row before timing')
    p.add_argument('--repeats', type=int_at_least(1),
                   default=d['repeats'],
                   help='timed calls per row (interleaved; median)')
    p.add_argument('--memory', choices=['none', 'inference', 'all'],
                   default=d['memory'],
                   help='peak memory of an inference step '
                   'and (all) of a training step (forward + backward)')
    p.add_argument('--memory-batch-size', type=int_at_least(1),
                   default=d['memory_batch_size'],
                   help='batch of the memory steps (default: the largest '
                   'of --batch-sizes)')
    p.add_argument('--profile', action='store_true',
                   help="record each PyTorch row's top operators by self "
                   'time (one profiled call per row and batch size)')
    p.add_argument('--resolutions', nargs='*', type=int_at_least(1),
                   default=list(d['resolutions']),
                   help='also time the backbone (batch 1) at these square '
                   'input sizes, first config only')
    p.add_argument('--scale-variants', nargs='+', choices=VARIANTS,
                   default=list(d['scale_variants']),
                   help='rows of the input-size study')
    p.add_argument('--scaling', action='store_true',
                   help='also the scaling rows: dense vs PM keep 0.7 (and '
                   'the peers at its GFLOPs) for each --scaling-configs, '
                   'batch 1, fp32, PyTorch eager, random weights')
    p.add_argument('--scaling-configs', nargs='+',
                   default=list(d['scaling_configs']),
                   help='models of the scaling rows')
    p.add_argument('--scaling-peers', nargs='*', choices=PEER_VARIANTS,
                   default=list(d['scaling_peers']),
                   help='peers of the scaling rows (small models only)')
    p.add_argument('--scaling-large-gflops', type=float,
                   default=d['scaling_large_gflops'],
                   help='dense GFLOPs above which a scaling model gets '
                   'no peers and --scaling-large-repeats timed calls')
    p.add_argument('--scaling-large-repeats', type=int_at_least(1),
                   default=d['scaling_large_repeats'],
                   help='timed calls per row of a large model')
    p.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction,
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


def wants_plot(args) -> bool:
    """The plot draws the CONFIG rows; scaling rows alone have none."""
    return not args.no_plot and bool(args.configs)


def check_outputs(args) -> None:
    """The result files may be written (not an input, not there unless
    --force)."""
    inputs = {}
    for i, arg in enumerate(args.configs):
        config, checkpoint = parse_config_arg(arg)
        inputs.update({f'config {i + 1}': config,
                       f'checkpoint {i + 1}': checkpoint})
    kinds = dict(json='json', md='markdown', png='picture')
    for kind, path in result_paths(Path(args.out_dir),
                                   args.name or default_name(args),
                                   plot=wants_plot(args)).items():
        check_output_file(path, inputs, args.force, flag='--out-dir/--name',
                          kind=kinds[kind])


def benchmark(args) -> dict:
    """The benchmark with the parsed settings, its files checked first and
    written at the end, in a process with the given thread count."""
    settings = settings_from(BenchmarkSettings, args)
    check_outputs(args)
    set_process(args.threads, quiet=False)
    results = run(settings)
    print(render_text(results))
    paths = write_results(results, Path(args.out_dir),
                          args.name or default_name(args),
                          plot=wants_plot(args), replace=args.force)
    print('\nwrote ' + ', '.join(str(p) for p in paths.values()))
    return results


def main(argv: Optional[Sequence[str]] = None) -> dict:
    return run_cli(build_parser(), benchmark, argv)


if __name__ == '__main__':
    main()
