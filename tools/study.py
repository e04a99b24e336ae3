"""Quality study at matched FLOPs: every token-compression method on one

The command line of ``mmseg_pm.cli.study`` (its docstring and ``--help``
say how to use it).
"""
from mmseg_pm.cli.study import main
from mmseg_pm.cli import run_tool

if __name__ == '__main__':
    run_tool(main)
