"""The demo (``./run demo``) end to end with a few iterations: every stage
runs, the table has the residual and the authors' rows at the same
structure, and the files it promises are written."""
import json

import pytest
import torch
from mmengine.config import Config

from mmseg_pm.cli import demo as demo_cli
from mmseg_pm.demo import run_demo


@pytest.fixture
def one_thread():
    """One torch thread, what tools/demo.py sets (the library leaves the
    process's thread count alone)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow  # the whole demo pipeline
def test_demo_runs_every_stage_and_writes_its_table(tmp_path, capsys,
                                                    one_thread):
    """From Python with keyword settings (tools/demo.py builds the same
    settings: the test below)."""
    result = run_demo(data_root=str(tmp_path / 'data'),
                      work_dir=str(tmp_path / 'work'), train_iters=2,
                      distill_iters=2, score_iters=1, bench_batch=2,
                      device='cpu')
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
    # the distillation's schedule stretched to its 2 iterations: one of
    # warm-up, then the decay
    tuned = Config.fromfile(str(work / 'distill' / 'distill_config.py'))
    assert [(s['type'], s['begin'], s['end'])
            for s in tuned.param_scheduler] == [('LinearLR', 0, 1),
                                                ('PolyLR', 1, 2)]
    printed = capsys.readouterr().out
    assert 'FLOPs cut' in printed and 'vs dense' in printed


def test_command_line_defaults_are_the_settings_defaults():
    """One place for each default: the parser reads the dataclass."""
    from mmseg_pm.utils.errors import UsageError
    from mmseg_pm.cli import settings_from
    from mmseg_pm.demo import DemoSettings
    parsed = settings_from(DemoSettings, demo_cli.build_parser().parse_args(
        ['--layers', '1', '2']))
    assert parsed == DemoSettings(layers=(1, 2))
    with pytest.raises(UsageError, match='keep \\+ prune <= 1'):
        DemoSettings(keep_rate=0.95, prune_rate=0.1)
