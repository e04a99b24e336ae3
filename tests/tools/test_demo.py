"""The demo (``./run demo``) end to end with a few iterations: every stage
runs, the table has the residual and the authors' rows at the same
structure, and the files it promises are written."""
import json

import pytest

from mmseg_pm.cli import demo as demo_cli


@pytest.mark.slow  # the whole demo pipeline
def test_demo_runs_every_stage_and_writes_its_table(tmp_path, capsys):
    result = demo_cli.main([
        '--data-root', str(tmp_path / 'data'), '--work-dir',
        str(tmp_path / 'work'), '--train-iters', '2', '--distill-iters', '2',
        '--score-iters', '1', '--bench-batch', '2'
    ])
    names = [r['model'] for r in result['rows']]
    assert names == ['dense', "authors' pinv, no fine-tuning",
                     'residual, no fine-tuning', 'residual + distilled']
    dense, pinv, residual, distilled = result['rows']
    # the same structure, so the same GFLOPs and tokens; a >= 30 % cut
    # the same structure; the residual rows also pay the content-aware
    # assignment (about 9 C multiply-adds per token and unit)
    assert residual['gflops'] == distilled['gflops']
    assert pinv['gflops'] < residual['gflops'] < 1.01 * pinv['gflops']
    assert pinv['tokens_per_block'] == residual['tokens_per_block']
    assert residual['gflops'] <= 0.7 * dense['gflops']
    assert max(residual['tokens_per_block']) < dense['tokens_per_block'][0]
    work = tmp_path / 'work'
    saved = json.loads((work / 'results.json').read_text())
    assert saved['rows'] == result['rows']
    assert '| residual + distilled |' in (work / 'results.md').read_text()
    assert (work / 'merge_windows.png').stat().st_size > 10000
    printed = capsys.readouterr().out
    assert 'FLOPs cut' in printed and 'vs dense' in printed
