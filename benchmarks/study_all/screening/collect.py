"""Collect the one-off screening runs (/tmp/exp/runs/<tag>) into a table:
mIoU from mmseg's metric file, centres per compressed block and GFLOPs
share recomputed from the saved model."""
import glob, json, sys
from pathlib import Path
import torch
sys.path.insert(0, '/work/main')
rows = []
for run in sorted(Path('runs').iterdir()):
    metric = sorted(run.glob('test/*/*.json'))
    if not metric:
        continue
    miou = json.loads(metric[-1].read_text())['mIoU']
    sd = torch.load(run / 'm.pth', weights_only=True)['state_dict']
    counts = {}
    for k, v in sd.items():
        if k.endswith('.is_centre'):
            counts[int(k.split('.')[-2])] = int(v.sum())
    layout = ' '.join(str(counts.get(i, '-')) for i in range(8))
    rows.append((run.name, layout, miou))
out = ['| run | centres in blocks 0..7 (- dense) | mIoU before FT |', '|---|---|---:|']
out += [f'| {t} | {l} | {m:.2f} |' for t, l, m in rows]
print('\n'.join(out))
json.dump([dict(run=t, centres=l, miou=m) for t, l, m in rows], open('results.json', 'w'), indent=1)
