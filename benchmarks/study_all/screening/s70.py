from lib import *
torch.set_num_threads(1)
for seed in (0, 100, 200, 300):
    miou([92] * 8, f'b0_s{seed}_70x', seed=seed)
    miou([None] + [84] * 7, f'd0_s{seed}_70x', seed=seed)
