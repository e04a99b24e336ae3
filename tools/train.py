"""Train a segmentor from a config (mmseg-style command line).

The command line of ``mmseg_pm.cli.train`` (its docstring and ``--help``
say how to use it).
"""
from mmseg_pm.cli.train import main
from mmseg_pm.cli import run_tool

if __name__ == '__main__':
    run_tool(main)
