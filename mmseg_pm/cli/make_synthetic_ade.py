"""Write a small synthetic ADE20K-format data set for CPU experiments.

Example::

    python tools/make_synthetic_ade.py data/synthetic_ade --size 96 128
"""
import argparse
import sys


from mmseg_pm.cli import int_at_least
from mmseg_pm.datasets.synthetic_ade import make_synthetic_ade
from mmseg_pm.utils.outputs import check_output_dir


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Generate a synthetic data set in ADE20K layout')
    parser.add_argument('root', help='output directory (data_root)')
    parser.add_argument('--num-train', type=int_at_least(1), default=64)
    parser.add_argument('--num-val', type=int_at_least(1), default=16)
    parser.add_argument(
        '--size',
        type=int_at_least(16),
        nargs=2,
        default=(128, 128),
        metavar=('H', 'W'),
        help='image height and width')
    parser.add_argument('--seed', type=int_at_least(0), default=0)
    parser.add_argument(
        '--overwrite',
        action='store_true',
        help='replace ROOT if it holds something else')
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        check_output_dir(args.root, flag='root')
        info = make_synthetic_ade(
            args.root,
            num_train=args.num_train,
            num_val=args.num_val,
            size=tuple(args.size),
            seed=args.seed,
            overwrite=args.overwrite)
    except (FileExistsError, ValueError) as err:  # UsageError is one
        sys.exit(f'error: {err}')
    action = 'reused' if info['reused'] else 'wrote'
    print(f"{action} {info['num_train']} training + {info['num_val']} "
          f"validation images ({info['size'][0]}x{info['size'][1]}) "
          f"in {info['root']}")
    return info


if __name__ == '__main__':
    main()
