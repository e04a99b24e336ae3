"""Export a (compressed) segmentor to ONNX at a fixed input size.

The command line of ``mmseg_pm.cli.export_onnx`` (its docstring and ``--help``
say how to use it).
"""
from mmseg_pm.cli.export_onnx import main
from mmseg_pm.cli import run_tool

if __name__ == '__main__':
    run_tool(main)
