"""Test (and evaluate) a segmentor checkpoint (mmseg-style command line).

The command line of ``mmseg_pm.cli.test`` (its docstring and ``--help``
say how to use it).
"""
from mmseg_pm.cli.test import main

if __name__ == '__main__':
    main()
