"""The written results of a benchmark (JSON, markdown, PNG), each stamped
with the machine they were measured on. The pieces: :mod:`.machine`
(machine facts), :mod:`.targets` (ratios and target checks),
:mod:`.tables` (text and markdown), :mod:`.plot` (the figure)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

from mmseg_pm.utils.outputs import write_atomic

from .plot import render_plot
from .tables import render_markdown


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def render_json(results: dict) -> str:
    return json.dumps(_jsonable(results), indent=2) + '\n'


def result_paths(out_dir: Path, name: str,
                 plot: bool = True) -> Dict[str, Path]:
    """The files :func:`write_results` writes."""
    out_dir = Path(out_dir)
    paths = {'json': out_dir / f'{name}.json', 'md': out_dir / f'{name}.md'}
    if plot:
        paths['png'] = out_dir / f'{name}.png'
    return paths


def write_results(results: dict, out_dir: Path, name: str,
                  plot: bool = True, replace: bool = True) -> Dict[str, Path]:
    """Write ``name``.json / .md / .png under ``out_dir`` (atomically;
    ``replace=False``: refused where another run wrote one meanwhile)."""
    paths = result_paths(out_dir, name, plot)
    write_atomic(paths['json'], render_json(results), replace)
    write_atomic(paths['md'], render_markdown(results), replace)
    if plot:
        write_atomic(paths['png'], render_plot(results), replace)
    return paths
