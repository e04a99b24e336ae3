"""The whole Prune-and-Merge pipeline on the built-in synthetic data, on CPU.

The command line of ``mmseg_pm.cli.demo`` (its docstring and ``--help``
say how to use it).
"""
from mmseg_pm.cli.demo import main
from mmseg_pm.cli import run_tool

if __name__ == '__main__':
    run_tool(main)
