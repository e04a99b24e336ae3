"""Score the tokens of a trained segmentor, search one structure per
compressed unit, install it and write the compressed checkpoint (what
tools/prune.py runs; docs/prune_and_merge.md sections 1-2)."""
from typing import Optional

import torch
from mmengine.config import Config

from mmseg_pm.compression import (DEFAULT_PLACEMENT, RANKINGS,
                                  layer_token_counts, search_structures)
from mmseg_pm.compression.registry import (DEFAULT_METHOD, method_names,
                                           method_spec)
from mmseg_pm.models.checkpoint import load_checkpoint_into
from mmseg_pm.utils.checkpoint import (load_checkpoint_file, local_checkpoint,
                                       save_checkpoint_atomic)
from mmseg_pm.utils.errors import UsageError
from mmseg_pm.utils.outputs import check_not_input, check_output_file

from .config import check_data_folders, load_config
from .data import check_datasets
from .inference import build_segmentor, crop_flops
from .scoring import token_scores_from_config


def default_ranking(mode: str) -> str:
    """The paper's global ranking for layer-mode configs; each span ranks
    alone in span mode (its scores are averaged over the span)."""
    return 'layer' if mode == 'span' else 'global'


def prune_config(config: str, cfg_options: Optional[dict] = None,
                 **compression) -> Config:
    """The Prune-and-Merge config with ``compression`` overrides
    (keep_rate, prune_rate, rule, reconstruct, assign, neighbourhood;
    None: the config's),
    checked."""
    cfg = load_config(config, cfg_options)
    backbone = cfg.model.get('backbone', {})
    settings = backbone.get('compression')
    if backbone.get('type') != 'PMVisionTransformer' or settings is None:
        raise UsageError(
            f'{config} is not a Prune-and-Merge config: its backbone '
            "must be type='PMVisionTransformer' with a compression=dict(...)"
            ' (see configs/segmenter/pm-*.py)')
    method = settings.get('method', DEFAULT_METHOD)
    spec = method_spec(method) if method in method_names() else None
    if spec is None or not spec.structures:
        raise UsageError(
            f'{config} compresses with method={method!r}, which picks its '
            'merges per image: there is no structure to search. tools/'
            'prune.py takes Prune-and-Merge configs (configs/*/pm-*.py); '
            'evaluate this one directly: python tools/test.py CONFIG '
            'DENSE_CHECKPOINT')
    settings.update({k: v for k, v in compression.items() if v is not None})
    try:
        spec.config.from_dict(settings, backbone.get('num_layers', 12))
    except ValueError as err:
        raise UsageError(f'invalid compression settings: {err}') from err
    return cfg


def check_prune_paths(cfg: Config, config: str, checkpoint: str, out: str,
                      force: bool = False) -> None:
    """The checkpoint and the scoring data exist (and the data is sound:
    :func:`mmseg_pm.apis.data.check_datasets`); ``out`` is none of the
    inputs, not an existing file without ``force``, and writable."""
    local_checkpoint(checkpoint)
    check_output_file(out, dict(config=config, checkpoint=checkpoint),
                      force, kind='checkpoint')
    check_not_input(out, check_data_folders(cfg, ['train_dataloader']),
                    '--out')
    check_datasets(cfg, ['train_dataloader'])


def pick_device(name: Optional[str]) -> str:
    if name is None:
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda' and not torch.cuda.is_available():
        raise UsageError('--device cuda but torch sees no CUDA device; '
                         'use --device cpu')
    return name


def prune_segmentor(cfg: Config, checkpoint: str,
                    ranking: Optional[str] = None, iters: int = 100,
                    placement: str = DEFAULT_PLACEMENT,
                    depth_lambda: float = 0.0, seed: int = 0,
                    device: Optional[str] = None):
    """Load the dense weights of ``checkpoint`` into the config's model,
    score its tokens on ``iters`` training batches, search and install the
    structures. Returns ``(model, summary, dataset_meta)``; the summary
    holds the settings, tokens per block, FLOPs before and after and the
    scores (saved in the checkpoint's meta), ``dataset_meta`` the
    checkpoint's (class names and palette), if any."""
    loaded = load_checkpoint_file(checkpoint)
    model = build_segmentor(cfg)
    load_checkpoint_into(model, loaded, source=str(checkpoint),
                         structures='ignore')  # searched below
    model.to(pick_device(device)).eval()
    backbone = model.backbone
    compression = backbone.compression
    ranking = ranking or default_ranking(compression.mode)
    if ranking not in RANKINGS:
        raise UsageError(f'ranking must be one of {RANKINGS}, got '
                         f'{ranking!r}')
    with backbone.dense_forward():
        flops_dense = crop_flops(model)
    scores = token_scores_from_config(model, cfg, iters, depth_lambda, seed)
    structures = search_structures(scores, compression, backbone.grid_size,
                                   ranking, placement, seed)
    backbone.set_structures(structures)
    flops_pm = crop_flops(model)
    num_prefix = 1 if backbone.with_cls_token else 0
    n = backbone.grid_size[0] * backbone.grid_size[1]
    rows = layer_token_counts(structures, compression.units,
                              len(backbone.layers), n, num_prefix)
    summary = dict(
        source_checkpoint=str(checkpoint), ranking=ranking,
        placement=placement, score_iters=iters, depth_lambda=depth_lambda,
        seed=seed,
        compression=dict(mode=compression.mode,
                         units=[list(u) for u in compression.units],
                         **compression.structure_settings(),
                         reconstruct=compression.reconstruct,
                         assign=compression.assign,
                         neighbourhood=compression.neighbourhood),
        grid=list(backbone.grid_size), img_size=list(backbone.img_size),
        layers=[dict(r, unit=None if r['unit'] is None else list(r['unit']))
                for r in rows],
        flops_dense=flops_dense, flops_compressed=flops_pm, scores=scores)
    return model, summary, loaded.get('meta', {}).get('dataset_meta')


def save_pruned(model, summary: dict, out: str,
                dataset_meta: Optional[dict] = None,
                replace: bool = True) -> None:
    """The compressed checkpoint (weights with their structures, the prune
    summary in ``meta``), written atomically (``replace=False``: refused
    if another run wrote ``out`` meanwhile)."""
    meta = dict(prune_and_merge=summary)
    if dataset_meta is not None:
        meta['dataset_meta'] = dataset_meta
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_checkpoint_atomic(dict(meta=meta, state_dict=state_dict), out,
                           replace)


def format_prune_table(summary: dict) -> str:
    """Tokens per block and GFLOPs before and after, one line per block."""
    lines = [f'{"block":>5}  {"unit":>7}  {"centres":>7}  {"merged":>6}  '
             f'{"pruned":>6}  {"tokens":>6}']
    for r in summary['layers']:
        unit = 'dense' if r['unit'] is None else (
            str(r['unit'][0]) if r['unit'][0] == r['unit'][1] else
            f'{r["unit"][0]}-{r["unit"][1]}')
        lines.append(f'{r["layer"]:>5}  {unit:>7}  {r["centres"]:>7}  '
                     f'{r["merged"]:>6}  {r["pruned"]:>6}  {r["tokens"]:>6}')
    dense, pm = summary['flops_dense'], summary['flops_compressed']
    h, w = summary['img_size']
    lines.append(f'GFLOPs per {h}x{w} crop: dense {dense / 1e9:.4g} -> '
                 f'compressed {pm / 1e9:.4g} '
                 f'({100 * (1 - pm / dense):.1f}% fewer)')
    return '\n'.join(lines)
