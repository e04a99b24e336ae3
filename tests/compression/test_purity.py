"""mmseg_pm.compression is pure: importing it (or any one of its modules)
pulls in torch, never mmseg, mmengine or mmcv."""
import json
import os
import pkgutil
import subprocess
import sys

import mmseg_pm.compression
from tests.helpers import ROOT

MODULES = ['mmseg_pm.compression'] + [
    f'mmseg_pm.compression.{m.name}'
    for m in pkgutil.iter_modules(mmseg_pm.compression.__path__)]
FORBIDDEN = {'mmseg', 'mmengine', 'mmcv'}

# Imports the modules one after another in a fresh interpreter and prints
# the top-level packages loaded after each. Imports only add modules, so a
# module that pulled in mmseg would show it from its line on.
PROBE = """
import importlib, json, sys
for module in sys.argv[1:]:
    importlib.import_module(module)
    print(json.dumps([module, sorted({n.split('.')[0] for n in sys.modules})]))
"""


def packages_after_each(modules) -> dict:
    """{module: top-level packages loaded once it is imported}, in a fresh
    interpreter with this checkout's mmseg_pm first."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.run([sys.executable, '-c', PROBE, *modules], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()
             if line.startswith('[')]
    return {module: set(packages) for module, packages in lines}


def test_compression_imports_no_mmseg_or_mmengine():
    assert {'mmseg_pm.compression.merge', 'mmseg_pm.compression.scoring',
            'mmseg_pm.compression.mstm', 'mmseg_pm.compression.tome',
            'mmseg_pm.compression.config', 'mmseg_pm.compression.search',
            'mmseg_pm.compression.structure'} <= set(MODULES)
    # the models last: the probe does see mmseg once something imports it
    loaded = packages_after_each(MODULES + ['mmseg_pm.models'])
    assert list(loaded) == MODULES + ['mmseg_pm.models']
    for module in MODULES:
        assert 'torch' in loaded[module], module
        assert not loaded[module] & FORBIDDEN, \
            (module, sorted(loaded[module] & FORBIDDEN))
    assert {'mmseg', 'mmengine'} <= loaded['mmseg_pm.models']
