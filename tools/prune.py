"""Score the tokens of a trained Segmenter and compress it (Prune and Merge).

Loads a dense checkpoint (e.g. one of mmseg's released Segmenter
checkpoints) into the Prune-and-Merge model of CONFIG, scores every patch
token with the config's own training data (gradient-weighted attention,
DESIGN.md §2.1), builds one structure per compressed unit (§2.2), installs
it and writes a checkpoint that ``tools/test.py CONFIG OUT`` evaluates as is
and ``tools/train.py`` fine-tunes (``--cfg-options load_from=OUT``).

Example::

    python tools/prune.py \\
        configs/segmenter/pm-segmenter_vit-s_mask_8xb1-160k_ade20k-512x512.py \\
        segmenter_vit-s_mask_8x1_512x512_160k_ade20k_20220105_151706-511bb103.pth \\
        --out work_dirs/pm_vit-s/pruned.pth --iters 100
    # the same 100 batches shared by 8 processes (GPUs, or CPUs with gloo)
    torchrun --nproc-per-node 8 tools/prune.py CONFIG CHECKPOINT \\
        --out work_dirs/pm_vit-s/pruned.pth --iters 100 --launcher pytorch

See ``--help`` for how ``--mode`` relates to the config's compression mode.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mmseg_pm  # noqa: E402,F401  (registers modules and the mmseg:: scope)
import torch  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402

from mmseg_pm.apis import init_distributed  # noqa: E402
from mmseg_pm.cli import (UsageError, add_launcher_arguments,  # noqa: E402
                          load_config, set_local_rank)
from mmseg_pm.compression import (DEFAULT_PLACEMENT,  # noqa: E402
                                  PLACEMENTS, RECONSTRUCTS, CompressionConfig,
                                  layer_token_counts, search_structures,
                                  token_scores_from_config)
from mmseg_pm.utils import (checkpoint_state_dict, count_flops,  # noqa: E402
                            load_checkpoint_file, save_checkpoint_atomic)

MODES = ('global', 'layer', 'span')
# --mode -> (compression mode the config must have, ranking of the search)
MODE_TO_RANKING = {
    'global': ('layer', 'global'),
    'layer': ('layer', 'layer'),
    'span': ('span', 'layer'),
}
MODE_HELP = """--mode and the config's compression mode:
  layer-mode configs (compression=dict(mode='layer', layers=[...])):
    global (default): all compressed layers ranked together, each layer gets
      its own token count; layer: keep_rate of the tokens in every layer
  span-mode configs (compression=dict(mode='span', spans=[...])):
    span (default): scores averaged over each span, keep_rate in every span
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Score tokens and compress a trained Segmenter '
        '(Prune and Merge)',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=MODE_HELP)
    parser.add_argument('config', help='Prune-and-Merge config file')
    parser.add_argument('checkpoint', help='dense checkpoint (file or URL)')
    parser.add_argument('--out', required=True, help='output checkpoint')
    parser.add_argument('--iters', type=int, default=100,
                        help='training batches to score with (default 100), '
                        'shared by the processes of a distributed run')
    parser.add_argument('--keep-rate', type=float,
                        help='fraction of tokens kept as centres '
                        '(default: the config\'s)')
    parser.add_argument('--prune-rate', type=float,
                        help='fraction of tokens pruned (default: the '
                        'config\'s)')
    parser.add_argument('--mode', choices=MODES,
                        help='structure search (default: global for '
                        'layer-mode configs, span for span-mode configs)')
    parser.add_argument('--rule', choices=('row', 'nearest'),
                        help='merge-window rule (default: the config\'s)')
    parser.add_argument('--reconstruct', choices=RECONSTRUCTS,
                        help="residual: every token keeps its value and gets "
                        "its window's update; pinv: the authors' "
                        "pseudo-inverse (default: the config's, else "
                        'residual). Test and fine-tune with the same value.')
    parser.add_argument('--placement', choices=PLACEMENTS,
                        default=DEFAULT_PLACEMENT,
                        help='where each unit\'s centres go; the ranking '
                        'decides how many (default: %(default)s; score = '
                        'the authors\' top-scored tokens; see '
                        'docs/residual.md)')
    parser.add_argument('--depth-lambda', type=float, default=0.0,
                        help='depth weight 1 - lambda*l of the scores '
                        '(authors: 0 for Segmenter)')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the scoring data order')
    parser.add_argument('--device', choices=('cpu', 'cuda'),
                        help='default: cuda if available, else cpu')
    parser.add_argument('--force', action='store_true',
                        help='overwrite an existing --out')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config entries, e.g. '
        'train_dataloader.batch_size=4 (pass the same ones to test.py)')
    add_launcher_arguments(parser)
    return parser


def check_paths(args) -> None:
    if '://' not in args.checkpoint and not Path(args.checkpoint).is_file():
        raise UsageError(f'checkpoint file not found: {args.checkpoint}')
    out = Path(args.out).resolve()
    if '://' not in args.checkpoint and out == Path(args.checkpoint).resolve():
        raise UsageError('--out is the input checkpoint; write the '
                         'compressed model to another file')
    if out.is_dir():
        raise UsageError(f'--out {args.out} is a directory; name a file')
    if out.exists() and not args.force:
        raise UsageError(f'{args.out} exists; pass --force to overwrite it')


def configure(args) -> Config:
    """The config with the command-line overrides, validated."""
    cfg = load_config(args.config, args.cfg_options)
    backbone = cfg.model.get('backbone', {})
    compression = backbone.get('compression')
    if backbone.get('type') != 'PMVisionTransformer' or compression is None:
        raise UsageError(
            f'{args.config} is not a Prune-and-Merge config: its backbone '
            "must be type='PMVisionTransformer' with a compression=dict(...)"
            ' (see configs/segmenter/pm-*.py)')
    for key in ('keep_rate', 'prune_rate', 'rule', 'reconstruct'):
        value = getattr(args, key)
        if value is not None:
            compression[key] = value
    try:
        parsed = CompressionConfig.from_dict(compression,
                                             backbone.get('num_layers', 12))
    except ValueError as err:
        raise UsageError(f'invalid compression settings: {err}') from err
    if args.mode is None:
        args.mode = 'span' if parsed.mode == 'span' else 'global'
    needed, _ = MODE_TO_RANKING[args.mode]
    if parsed.mode != needed:
        raise UsageError(
            f'--mode {args.mode} needs a {needed}-mode config '
            f"(compression=dict(mode='{needed}', ...)) but {args.config} is "
            f"{parsed.mode}-mode; use --mode "
            f"{'span' if parsed.mode == 'span' else 'global or layer'}")
    if args.iters < 1:
        raise UsageError(f'--iters must be >= 1, got {args.iters}')
    return cfg


def pick_device(name):
    if name is None:
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda' and not torch.cuda.is_available():
        raise UsageError('--device cuda but torch sees no CUDA device; '
                         'use --device cpu')
    return name


def load_dense_weights(model, checkpoint: dict, source: str) -> None:
    """Load a (dense) checkpoint; the structures keep their current values
    when it has none. Missing weights are an error, extra ones a warning."""
    state = checkpoint_state_dict(checkpoint)
    compressor_keys = {k: v for k, v in model.state_dict().items()
                       if '.token_compressors.' in k}
    state = {**compressor_keys, **state}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise ValueError(
            f'{source} lacks {len(result.missing_keys)} weights of the '
            f'config\'s model, e.g. {result.missing_keys[:5]}; is it a '
            'checkpoint of the same architecture?')
    if result.unexpected_keys:
        print(f'warning: ignored {len(result.unexpected_keys)} checkpoint '
              f'entries the model does not have, e.g. '
              f'{result.unexpected_keys[:5]}')


def segmentor_flops(model, img_size, device) -> int:
    """FLOPs of one forward of the segmentor on one crop (no slide loop)."""
    inputs = torch.zeros(1, 3, *img_size, device=device)
    return count_flops(model, inputs, mode='tensor')


def format_table(rows, flops_dense, flops_pm, img_size) -> str:
    lines = [f'{"block":>5}  {"unit":>7}  {"centres":>7}  {"merged":>6}  '
             f'{"pruned":>6}  {"tokens":>6}']
    for r in rows:
        unit = 'dense' if r['unit'] is None else (
            str(r['unit'][0]) if r['unit'][0] == r['unit'][1] else
            f'{r["unit"][0]}-{r["unit"][1]}')
        lines.append(f'{r["layer"]:>5}  {unit:>7}  {r["centres"]:>7}  '
                     f'{r["merged"]:>6}  {r["pruned"]:>6}  {r["tokens"]:>6}')
    saving = 100 * (1 - flops_pm / flops_dense)
    lines.append(f'GFLOPs per {img_size[0]}x{img_size[1]} crop: dense '
                 f'{flops_dense / 1e9:.4g} -> compressed '
                 f'{flops_pm / 1e9:.4g} ({saving:.1f}% fewer)')
    return '\n'.join(lines)


def prune(args, cfg: Config, rank: int = 0) -> dict:
    """Everything after validation; returns the summary saved in meta
    (written by rank 0 of a distributed run)."""
    device = pick_device(args.device)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    model = MODELS.build(cfg.model)
    checkpoint = load_checkpoint_file(args.checkpoint)
    load_dense_weights(model, checkpoint, args.checkpoint)
    model.to(device)
    backbone = model.backbone
    compression = backbone.compression
    _, ranking = MODE_TO_RANKING[args.mode]

    model.eval()
    with backbone.dense_forward():
        flops_dense = segmentor_flops(model, backbone.img_size, device)
    scores = token_scores_from_config(model, cfg, args.iters,
                                      args.depth_lambda, args.seed)
    structures = search_structures(scores, compression, backbone.grid_size,
                                   ranking, args.placement, args.seed)
    backbone.set_structures(structures)
    flops_pm = segmentor_flops(model, backbone.img_size, device)

    num_prefix = 1 if backbone.with_cls_token else 0
    n = backbone.grid_size[0] * backbone.grid_size[1]
    rows = layer_token_counts(structures, compression.units,
                              len(backbone.layers), n, num_prefix)
    summary = dict(
        config=str(args.config), source_checkpoint=str(args.checkpoint),
        mode=args.mode, ranking=ranking, placement=args.placement,
        score_iters=args.iters,
        depth_lambda=args.depth_lambda, seed=args.seed,
        compression=dict(mode=compression.mode,
                         units=[list(u) for u in compression.units],
                         keep_rate=compression.keep_rate,
                         prune_rate=compression.prune_rate,
                         rule=compression.rule,
                         reconstruct=compression.reconstruct),
        grid=list(backbone.grid_size), img_size=list(backbone.img_size),
        layers=[dict(r, unit=None if r['unit'] is None else list(r['unit']))
                for r in rows],
        flops_dense=flops_dense, flops_compressed=flops_pm,
        scores=scores)
    meta = {k: v for k, v in checkpoint.get('meta', {}).items()
            if k == 'dataset_meta'}
    meta['prune_and_merge'] = summary
    if rank != 0:  # every rank holds the same model; one writes it
        return summary
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_checkpoint_atomic(dict(meta=meta, state_dict=state_dict), args.out)
    print(format_table(rows, flops_dense, flops_pm, backbone.img_size))
    print(f'wrote {args.out}; evaluate: python tools/test.py {args.config} '
          f'{args.out}')
    return summary


def main(argv=None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    set_local_rank(args.local_rank)
    try:
        check_paths(args)
        cfg = configure(args)  # every option is checked before any work
        rank, _ = init_distributed(args.launcher)
        return prune(args, cfg, rank)
    except UsageError as err:
        parser.error(str(err))


if __name__ == '__main__':
    main()
