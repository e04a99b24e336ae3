"""Draw what a compressed Segmenter merged and pruned, over an image.

The command line of ``mmseg_pm.cli.visualize_tokens`` (its docstring and ``--help``
say how to use it).
"""
from mmseg_pm.cli.visualize_tokens import main
from mmseg_pm.cli import run_tool

if __name__ == '__main__':
    run_tool(main)
