from lib import *
torch.set_num_threads(1)
# sensitivity: only block b compressed at keep k
for k in (8, 29):
    for b in range(L):
        counts = [None] * L; counts[b] = k
        miou(counts, f'sens_b{b}_k{k}')
