"""Train a segmentor from a config (mmseg-style command line).

Example::

    python tools/train.py configs/xxx.py --work-dir work_dirs/xxx
    torchrun --nproc-per-node 2 tools/train.py CONFIG --launcher pytorch
"""
from mmseg_pm.cli.train import main

if __name__ == '__main__':
    main()
