"""Score the tokens of a trained Segmenter and compress it (Prune and Merge).

Loads a dense checkpoint (e.g. one of mmseg's released Segmenter checkpoints)
into the Prune-and-Merge model of CONFIG, scores every patch token with the
config's own training data (gradient-weighted attention,
docs/prune_and_merge.md section 1), builds one structure per compressed unit
(section 2), installs it and writes a checkpoint that ``tools/test.py CONFIG
OUT`` evaluates as is and ``tools/train.py`` fine-tunes (``--cfg-options
load_from=OUT``).

Example::

    python tools/prune.py \\
        configs/segmenter/pm-segmenter_vit-s_mask_8xb1-160k_ade20k-512x512.py \\
        segmenter_vit-s_mask_8x1_512x512_160k_ade20k_20220105_151706-511bb103.pth \\
        --out work_dirs/pm_vit-s/pruned.pth --iters 100
    # the same 100 batches shared by 8 processes (GPUs, or CPUs with gloo)
    torchrun --nproc-per-node 8 tools/prune.py CONFIG CHECKPOINT \\
        --out work_dirs/pm_vit-s/pruned.pth --iters 100 --launcher pytorch

See ``--help`` for the rankings.
"""
import argparse
import shlex

import mmseg_pm.models  # noqa: F401  (registers modules, the mmseg:: scope)

from mmseg_pm.apis import (init_distributed, prune_config, prune_segmentor,
                           save_pruned)
from mmseg_pm.apis.distributed import check_launcher_environment
from mmseg_pm.apis.prune import check_prune_paths, format_prune_table
from mmseg_pm.cli import (CfgOptionsAction, add_launcher_arguments, float_in,
                          int_at_least, run_cli)
from mmseg_pm.compression import (ASSIGNS, DEFAULT_PLACEMENT, PLACEMENTS,
                                  RANKINGS, RECONSTRUCTS, PMConfig)
from mmseg_pm.compression.registry import config_default
from mmseg_pm.compression.scoring import check_depth_lambda
from mmseg_pm.compression.structure import ASSIGN_RULES


def _default(name: str):
    """PMConfig's default: what a config that does not set it uses."""
    return config_default(PMConfig, name)

RANKING_HELP = """--ranking (the compression mode comes from the config):
  global: the scores of all compressed units ranked together, so each unit
    gets its own number of centres (the paper's automatic structure;
    default for layer-mode configs)
  layer: keep_rate of the tokens in every unit (default for span-mode
    configs, whose scores are averaged over each span)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Score tokens and compress a trained Segmenter '
        '(Prune and Merge)',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=RANKING_HELP)
    parser.add_argument('config', help='Prune-and-Merge config file')
    parser.add_argument('checkpoint', help='dense checkpoint (file or URL)')
    parser.add_argument('--out', required=True, help='output checkpoint')
    parser.add_argument('--iters', type=int_at_least(1), default=100,
                        help='training batches to score with (default 100), '
                        'shared by the processes of a distributed run')
    parser.add_argument('--keep-rate', type=float_in(0, 1, low_open=True),
                        help='fraction of tokens kept as centres '
                        '(default: the config\'s)')
    parser.add_argument('--prune-rate',
                        type=float_in(0, 1, high_open=True),
                        help='fraction of tokens pruned (default: the '
                        'config\'s)')
    parser.add_argument('--ranking', choices=RANKINGS,
                        help='how the centres are shared out among the '
                        'units (default: global for layer-mode configs, '
                        'layer for span-mode configs; see below)')
    parser.add_argument('--rule', choices=ASSIGN_RULES,
                        help='merge-window rule (default: the config\'s)')
    parser.add_argument('--reconstruct', choices=RECONSTRUCTS,
                        help="residual: every token keeps its value and gets "
                        "its window's update; pinv: the authors' "
                        "pseudo-inverse (default: the config's, else "
                        f"{_default('reconstruct')}). Test and fine-tune "
                        'with the same value.')
    parser.add_argument('--assign', choices=ASSIGNS,
                        help="content: per image, each token joins the most "
                        'similar centre among the windows near it (centres '
                        "and shapes fixed); static: the structure's windows "
                        f"(default: the config's, else {_default('assign')})."
                        ' Test and fine-tune with the same value.')
    parser.add_argument('--neighbourhood', type=int_at_least(1),
                        help='odd size k of the k x k tokens whose windows '
                        "a token may join under --assign content (default: "
                        f"the config's, else {_default('neighbourhood')})")
    parser.add_argument('--placement', choices=PLACEMENTS,
                        default=DEFAULT_PLACEMENT,
                        help='where each unit\'s centres go; the ranking '
                        'decides how many (default: %(default)s; score = '
                        'the authors\' top-scored tokens; see '
                        'docs/residual.md)')
    parser.add_argument('--depth-lambda', type=float_in(0), default=0.0,
                        help='depth weight 1 - lambda*l of the scores '
                        '(authors: 0 for Segmenter)')
    parser.add_argument('--seed', type=int_at_least(0), default=0,
                        help='seed of the scoring data order')
    parser.add_argument('--device', choices=('cpu', 'cuda'),
                        help='default: cuda if available, else cpu')
    parser.add_argument('--force', action='store_true',
                        help='overwrite an existing --out')
    parser.add_argument(
        '--cfg-options', nargs='+', action=CfgOptionsAction,
        help='override config entries, e.g. '
        'train_dataloader.batch_size=4 (pass the same ones to test.py)')
    add_launcher_arguments(parser)
    return parser


def run(args) -> dict:
    check_launcher_environment(args.launcher)
    cfg = prune_config(args.config, args.cfg_options,
                       keep_rate=args.keep_rate, prune_rate=args.prune_rate,
                       rule=args.rule, reconstruct=args.reconstruct,
                       assign=args.assign, neighbourhood=args.neighbourhood)
    check_depth_lambda(cfg.model.backbone.get('num_layers', 12),
                       args.depth_lambda)  # before the model is loaded
    check_prune_paths(cfg, args.config, args.checkpoint, args.out,
                      args.force)  # every option is checked before any work
    rank, _ = init_distributed(args.launcher)
    model, summary, dataset_meta = prune_segmentor(
        cfg, args.checkpoint, args.ranking, args.iters, args.placement,
        args.depth_lambda, args.seed, args.device)
    summary['config'] = str(args.config)
    if rank == 0:  # every rank holds the same model; one writes it
        save_pruned(model, summary, args.out, dataset_meta, args.force)
        print(format_prune_table(summary))
        print(f'wrote {args.out}; evaluate: python tools/test.py '
              f'{shlex.quote(str(args.config))} {shlex.quote(str(args.out))}')
    return summary


def main(argv=None) -> dict:
    return run_cli(build_parser(), run, argv)


if __name__ == '__main__':
    main()
