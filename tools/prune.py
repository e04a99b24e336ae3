"""Score the tokens of a trained Segmenter and compress it (Prune and Merge).

The command line of ``mmseg_pm.cli.prune`` (its docstring and ``--help``
say how to use it).
"""
from mmseg_pm.cli.prune import main
from mmseg_pm.cli import run_tool

if __name__ == '__main__':
    run_tool(main)
