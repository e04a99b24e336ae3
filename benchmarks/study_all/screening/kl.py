from lib import *
import copy
import torch.nn.functional as F
from mmengine.runner import Runner
from mmengine.registry import init_default_scope
torch.set_num_threads(1)
init_default_scope('mmseg')
cfg = copy.deepcopy(base.train_dataloader)
cfg.batch_size = 8
loader = Runner.build_dataloader(cfg)

from mmseg_pm.apis.inference import build_segmentor
dm, _ = model_for([None]*7 + [144]); dm.eval()
batches = []
it = iter(loader)
for _ in range(4):
    batches.append(dm.data_preprocessor(next(it), False)['inputs'])
with torch.no_grad():
    ref = [F.log_softmax(dm(x, mode='tensor'), 1) for x in batches]
def kl(counts, **kw):
    m, _ = model_for(counts, **kw); m.eval()
    with torch.no_grad():
        t = 0
        for x, r in zip(batches, ref):
            o = F.log_softmax(m(x, mode='tensor'), 1)
            t += (r.exp() * (r - o)).sum(1).mean().item()
    return t / len(batches)
import itertools
for name, counts in [('d0_70', [None]+[84]*7), ('b0_70', [92]*8), ('d0_50', [None]+[36]*7), ('b0_50', [52]*8),
                     ('d0_40', [None]+[8]*7), ('b0_40', [29]*8), ('d01_40', [None, None]+[1]*6), ('d01_50', [None, None]+[18]*6)]:
    print(name, counts, f'{100*flops(counts):.1f}%', f'kl {kl(counts):.4f}', flush=True)
