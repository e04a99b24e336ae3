from lib import *
torch.set_num_threads(1)
for budget, k in ((0.4, 29), (0.5, 52)):
    for seed in (0, 100):
        miou([k] * 8, f'uni_s{seed}_{int(budget*100)}', seed=seed, uniform=True)
miou([96] * 8, 'b0_s0_70')
miou([96] * 8, 'b0_s100_70', seed=100)
miou([None]+[84] * 7, 'd0_s0_70')
miou([None]+[84] * 7, 'd0_s100_70', seed=100)
