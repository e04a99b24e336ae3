from lib import *
torch.set_num_threads(1)
def calib(shape, target):
    lo, hi = 0.0, 144.0 * 8
    for _ in range(30):
        mid = (lo + hi) / 2
        c = [max(1, min(144, round(mid * s))) for s in shape]
        if flops(c) > target: hi = mid
        else: lo = mid
    return [max(1, min(144, round(lo * s))) for s in shape]
drop8 = [0.88, 0.15, 1.85, 0.45, 1.33, 2.03, 0.53, 0.0]
shapes = {
 'uniform': [1.0] * 8,
 'sens': [max(d, 0.1) for d in drop8],
 'sqrtsens': [max(d, 0.1) ** 0.5 for d in drop8],
}
for budget in (0.4, 0.5):
    for name, shape in shapes.items():
        c = calib(shape, budget)
        miou(c, f'{name}_{int(budget*100)}')
