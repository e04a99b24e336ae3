"""The study's mIoU against the measured speed-up at the same GFLOPs.

The command line of ``mmseg_pm.cli.speed_quality`` (its docstring and
``--help`` say how to use it).
"""
from mmseg_pm.cli import run_tool
from mmseg_pm.cli.speed_quality import main

if __name__ == '__main__':
    run_tool(main)
