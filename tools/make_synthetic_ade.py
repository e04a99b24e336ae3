"""Write a small synthetic ADE20K-format data set for CPU experiments.

Example::

    python tools/make_synthetic_ade.py data/synthetic_ade --size 96 128
"""
from mmseg_pm.cli.make_synthetic_ade import main

if __name__ == '__main__':
    main()
