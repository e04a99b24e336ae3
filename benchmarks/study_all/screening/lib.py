import json, sys, torch
from pathlib import Path
sys.path.insert(0, '/work/main')
from mmseg_pm.study.settings import StudySettings
from mmseg_pm.study.pipeline import (study_config, compressed_config, load_dense,
                                     evaluate)
from mmseg_pm.apis import (checkpoint_state_dict, load_checkpoint_file,
                           save_checkpoint_atomic)
from mmseg_pm.apis.config import write_config
from mmseg_pm.apis.inference import build_segmentor, crop_flops
from mmseg_pm.apis.knobs import compression_for
from mmseg_pm.compression.search import place_centres
from mmseg_pm.compression.structure import build_structure

WORK = Path('/work/main/work_dirs/study')
settings = StudySettings(work_dir=str(WORK))
base = study_config(settings)
dense = json.load(open(WORK / 'dense.json'))['value']
scores = torch.tensor(json.load(open(WORK / 'scores.json'))['value'])
state = checkpoint_state_dict(load_checkpoint_file(dense['checkpoint']))
N, L, GRID = 144, 8, (12, 12)
DENSE_FLOPS = dense['flops']

def model_for(counts, method='res-content-all', seed=0, placement='random', uniform=False, **over):
    layers = [i for i, c in enumerate(counts) if c is not None]
    comp = compression_for(method, 1, L, N)
    comp['layers'] = layers
    comp.update(over)
    cfg = compressed_config(base, comp)
    model = build_segmentor(cfg)
    load_dense(model, state)
    structs = []
    for u, l in enumerate(layers):
        if placement == 'stratified':
            from mmseg_pm.compression.search import grid_cells
            cell = grid_cells(GRID, counts[l])
            g = torch.Generator().manual_seed(seed + u)
            r = torch.rand(N, generator=g)
            best = torch.full((counts[l],), -1.0).scatter_reduce(0, cell, r, 'amax')
            c = torch.nonzero(r == best[cell]).flatten()
        else:
            c = place_centres(scores[l], counts[l], GRID, None, placement, seed + u)
        structs.append(build_structure(GRID, c, None, None if uniform else scores[l], comp['rule']))
    model.backbone.set_structures(structs)
    return model, cfg

def flops(counts, **kw):
    return crop_flops(model_for(counts, **kw)[0]) / DENSE_FLOPS

def miou(counts, tag, **kw):
    model, cfg = model_for(counts, **kw)
    f = crop_flops(model) / DENSE_FLOPS
    work = Path('/tmp/exp/runs') / tag
    config = write_config(cfg, work / 'config.py')
    ckpt = work / 'm.pth'
    save_checkpoint_atomic(dict(state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()}), str(ckpt))
    m = evaluate(config, str(ckpt), work, tag)
    print(f'{tag}: counts {counts} flops {100*f:.1f}% miou {m:.2f}', flush=True)
    return f, m
