"""Convert a timm Vision Transformer checkpoint to mmseg / mmseg_pm names.

The command line of ``mmseg_pm.cli.timm2mmseg_pm`` (its docstring and ``--help``
say how to use it).
"""
from mmseg_pm.cli.timm2mmseg_pm import main

if __name__ == '__main__':
    main()
