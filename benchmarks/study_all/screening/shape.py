from lib import *
torch.set_num_threads(1)
def calib(shape, target):
    lo, hi = 0.0, 144.0 * 8
    for _ in range(25):
        mid = (lo + hi) / 2
        c = [max(1, min(144, round(mid * s))) for s in shape]
        if flops(c) > target: hi = mid
        else: lo = mid
    return [max(1, min(144, round(lo * s))) for s in shape]
shapes = {'dec': [1.5 - i / 7 for i in range(8)], 'inc': [0.5 + i / 7 for i in range(8)],
          'mid': [0.6, 0.9, 1.2, 1.2, 1.2, 1.2, 0.9, 0.6]}
for budget in (0.5, 0.4):
    for name, shape in shapes.items():
        c = calib(shape, budget)
        for seed in (0, 100):
            miou(c, f'{name}_s{seed}_{int(budget*100)}', seed=seed)
