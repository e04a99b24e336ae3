"""Test (and evaluate) a segmentor checkpoint (mmseg-style command line).

The command line of ``mmseg_pm.cli.test`` (its docstring and ``--help``
say how to use it).
"""
from mmseg_pm.cli.test import main
from mmseg_pm.cli import run_tool

if __name__ == '__main__':
    run_tool(main)
