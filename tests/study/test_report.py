"""The study's summary: the best row at a budget is one at that budget
(a schedule-knob method's nearest setting far from it is reported, not
ranked there). The report still reads every committed study result and
writes the tables committed with it."""
import json
from pathlib import Path

import pytest

from mmseg_pm.study.report import (best_per_budget, dense_row,
                                   format_markdown, format_windows_markdown)
from tests.helpers import ROOT


def is_study_result(path: Path) -> bool:
    """A results.json written by tools/study.py (its settings name the
    methods), not the demo's or a hand-collected one."""
    data = json.loads(path.read_text())
    return isinstance(data, dict) and 'methods' in data.get('settings', {})


STUDY_RESULTS = sorted(p for p in (ROOT / 'benchmarks').rglob('results*.json')
                       if is_study_result(p))


def row(method, budget, fraction, after):
    return dict(method=method, budget=budget, fraction=fraction,
                miou_after=after, miou_before=after - 1)


def test_best_at_a_budget_is_a_row_at_that_budget():
    rows = [row('res-content', 0.5, 0.500, 59.5),
            row('mpm', 0.5, 0.838, 61.3),  # its nearest schedule: 84 %
            row('tome', 0.5, 0.509, 58.0),  # within 2 % of the budget
            row('res-content', 0.7, 0.702, 61.2),
            row('mpm', 0.7, 0.838, 61.3)]
    best = best_per_budget(rows)
    assert best[0.5]['method'] == 'res-content'
    assert best[0.7]['method'] == 'res-content'
    assert best_per_budget(rows, tolerance=0.3)[0.7]['method'] == 'mpm'
    assert best_per_budget(rows, 'miou_before')[0.5]['method'] == \
        'res-content'


def test_every_committed_study_result_is_found():
    assert {p.parent.relative_to(ROOT).as_posix() for p in STUDY_RESULTS} \
        >= {'benchmarks/study', 'benchmarks/study_all',
            'benchmarks/study192_all', 'benchmarks/study192_all/mpm'}


@pytest.mark.parametrize('path', STUDY_RESULTS,
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_committed_results_give_their_committed_tables(path):
    """The results table again, to the letter; the merge-window table
    (whose columns grew since the earliest runs) from every row that has
    windows."""
    result = json.loads(path.read_text())
    table = path.with_name(path.name.replace('results', 'table')
                           .replace('.json', '.md')).read_text()
    rows = result['rows']
    assert format_markdown([dense_row(result['dense'])] + rows) in table
    windows = format_windows_markdown(rows).splitlines()[2:]
    assert len(windows) == len([r for r in rows if r.get('windows')])
