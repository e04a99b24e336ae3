"""The study's summary: the best row at a budget is one at that budget
(a schedule-knob method's nearest setting far from it is reported, not
ranked there)."""
from mmseg_pm.study.report import best_per_budget


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
