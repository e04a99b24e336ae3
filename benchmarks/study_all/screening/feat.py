from lib import *
import sys
from mmseg_pm.compression import content as C, unit as U
torch.set_num_threads(1)
orig = C.content_assignment
mode = sys.argv[1]
def patched(x, tables, num_prefix, pattern=None):
    if mode == 'centre':
        x = x - x.mean(-1, keepdim=True)
    elif mode == 'tokmean':
        p = x[:, num_prefix:]
        x = torch.cat((x[:, :num_prefix], p - p.mean(1, keepdim=True)), 1)
    return orig(x, tables, num_prefix, pattern)
U.content_assignment = patched
for budget, k in ((0.4, 29), (0.5, 52), (0.7, 92)):
    for seed in (0, 100):
        miou([k] * 8, f'{mode}_s{seed}_{int(budget*100)}', seed=seed)
