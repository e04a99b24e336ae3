from lib import *
torch.set_num_threads(1)
for budget, k in ((0.4, 29), (0.5, 52)):
    for placement in ('stratified', 'spread', 'lattice'):
        miou([k] * 8, f'{placement}_{int(budget*100)}', placement=placement)
    for seed in (1, 2):
        miou([k] * 8, f'random_s{seed}_{int(budget*100)}', seed=seed * 100)
