"""Test (and evaluate) a segmentor checkpoint (mmseg-style command line).

Example::

    python tools/test.py CONFIG CHECKPOINT --out work_dirs/preds
    torchrun --nproc-per-node 2 tools/test.py CONFIG CKPT --launcher pytorch
"""
from mmseg_pm.cli.test import main

if __name__ == '__main__':
    main()
