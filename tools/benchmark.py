"""Benchmark dense and compressed Segmenters and their peers side by side.

The command line of ``mmseg_pm.cli.benchmark`` (its docstring and ``--help``
say how to use it).
"""
from mmseg_pm.cli.benchmark import main
from mmseg_pm.cli import run_tool

if __name__ == '__main__':
    run_tool(main)
