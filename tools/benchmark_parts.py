"""Where a compressed Segmenter's time goes (blocks, merge, assignment,
reconstruct, decode head), and the assignment against one block.

The command line of ``mmseg_pm.cli.benchmark_parts`` (its docstring and
``--help`` say how to use it).
"""
from mmseg_pm.cli import run_tool
from mmseg_pm.cli.benchmark_parts import main

if __name__ == '__main__':
    run_tool(main)
