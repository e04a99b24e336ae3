"""The time breakdown and the assignment microbenchmark
(tools/benchmark_parts.py) on the tiny synthetic config: every part is
timed where it runs and nowhere else, the parts add up to the forward,
the clocks leave the models as they were, and the tool writes its two
files and refuses to overwrite them."""
import json

import pytest
import torch

from mmseg_pm.benchmark.breakdown import (PARTS, assignment_costs,
                                          clocked, Clocks, parts_models,
                                          time_parts)
from mmseg_pm.cli.benchmark_parts import main

CONFIG = 'configs/synthetic/pm-segmenter_vit-tiny_mask_synthetic-ade-64x64.py'


def test_parts_are_timed_where_they_run_and_add_up():
    models = parts_models(CONFIG, [0.5])
    assert set(models) == {'dense', 'content keep 0.5', 'static keep 0.5'}
    x = torch.randn(2, 3, 64, 64)
    results = time_parts(models, x, warmup=0, repeats=2)
    for name, parts in results.items():
        assert set(parts) == set(PARTS) | {'total'}
        assert parts['total'] > 0 and parts['decode head'] > 0
        assert sum(parts[p] for p in PARTS) == pytest.approx(
            parts['total'], rel=0.35)  # medians of parts vs of the total
    assert results['dense']['blocks in units'] == 0
    assert results['dense']['merge'] == 0
    assert results['static keep 0.5']['assignment'] == 0
    assert results['content keep 0.5']['assignment'] > 0
    for name in ('content keep 0.5', 'static keep 0.5'):
        assert results[name]['blocks in units'] > 0
        assert results[name]['reconstruct'] > 0


def test_clocks_leave_the_model_as_it_was():
    model = parts_models(CONFIG, [0.5])['content keep 0.5']
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x, mode='tensor')
        with clocked(model, Clocks()):
            inside = model(x, mode='tensor')
        after = model(x, mode='tensor')
    assert torch.equal(before, inside) and torch.equal(before, after)
    for module in model.modules():
        assert 'forward' not in vars(module) and 'merge' not in vars(module)


def test_assignment_costs_time_every_formulation_against_a_block():
    rows = assignment_costs((8, 8), 32, keep_rates=[0.5], batch_sizes=[2],
                            warmup=0, repeats=2)
    assert len(rows) == 1
    row = rows[0]
    assert row['merged_tokens'] == 32 and 32 <= row['pairs'] <= 9 * 32
    assert set(row['ms']) == {'assignment', 'block'}
    assert all(ms > 0 for ms in row['ms'].values())


def test_tool_writes_json_and_markdown_and_keeps_them(tmp_path, capsys):
    args = [CONFIG, '--keep-rates', '0.5', '--batch-sizes', '1',
            '--warmup', '0', '--repeats', '1', '--threads', '1',
            '--out-dir', str(tmp_path), '--name', 'parts']
    results = main(args)
    saved = json.loads((tmp_path / 'parts.json').read_text())
    assert saved['breakdown'] == json.loads(json.dumps(
        results['breakdown']))
    text = (tmp_path / 'parts.md').read_text()
    assert '| content keep 0.5 | 1 |' in text and 'assignment ms' in text
    with pytest.raises(SystemExit) as refused:
        main(args)
    assert refused.value.code == 2
    assert 'exists' in capsys.readouterr().err
    assert (tmp_path / 'parts.md').read_text() == text
