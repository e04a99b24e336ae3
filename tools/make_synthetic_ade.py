"""Write a small synthetic ADE20K-format data set for CPU experiments.

The command line of ``mmseg_pm.cli.make_synthetic_ade`` (its docstring and ``--help``
say how to use it).
"""
from mmseg_pm.cli.make_synthetic_ade import main
from mmseg_pm.cli import run_tool

if __name__ == '__main__':
    run_tool(main)
