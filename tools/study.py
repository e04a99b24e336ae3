"""Quality study at matched FLOPs: every token-compression method on one

The command line of ``mmseg_pm.cli.study`` (its docstring and ``--help``
say how to use it).
"""
from mmseg_pm.cli.study import main

if __name__ == '__main__':
    main()
