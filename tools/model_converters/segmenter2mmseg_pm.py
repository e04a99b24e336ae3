"""Convert a checkpoint of the original Segmenter code (rstrudel/segmenter)

The command line of ``mmseg_pm.cli.segmenter2mmseg_pm`` (its docstring and ``--help``
say how to use it).
"""
from mmseg_pm.cli.segmenter2mmseg_pm import main

if __name__ == '__main__':
    main()
