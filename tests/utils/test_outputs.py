"""The output rule of every tool that writes files
(mmseg_pm.utils.outputs): what an output may be, and how it is written."""
import os

import pytest
import torch

from mmseg_pm.utils.checkpoint import save_checkpoint_atomic
from mmseg_pm.utils.outputs import (OutputError, atomic_output,
                                    check_output_dir, check_output_file,
                                    check_output_suffix, output_suffixes,
                                    save_figure, write_atomic)


def test_output_file_rule(tmp_path):
    config = tmp_path / 'cfg.py'
    config.write_text('x = 1\n')
    link = tmp_path / 'link.py'
    link.symlink_to(config)
    hard = tmp_path / 'hard.py'
    os.link(config, hard)
    data = tmp_path / 'data'
    data.mkdir()
    for out, message in ((config, 'is the input config'),
                         (link, 'is the input config'),
                         (hard, 'is the input config'),
                         (data / 'x.png', 'is inside the input data'),
                         (data, 'is the input data')):
        with pytest.raises(OutputError, match=message):
            check_output_file(out, dict(config=config, data=data),
                              force=True)
    with pytest.raises(OutputError, match='exists; pass --force'):
        check_output_file(config, None)
    with pytest.raises(OutputError, match='is a folder; name a file'):
        check_output_file(data, None)
    with pytest.raises(OutputError, match='is a file, not a folder'):
        check_output_file(config / 'sub' / 'x.pth', None)
    with pytest.raises(OutputError, match='is a file; name a folder'):
        check_output_dir(config)
    assert check_output_file(tmp_path / 'new' / 'dir' / 'x.pth', None)
    assert not (tmp_path / 'new').exists()  # checking creates nothing
    assert config.read_text() == 'x = 1\n'


@pytest.mark.parametrize('umask', [0o022, 0o027])
def test_outputs_follow_the_umask(tmp_path, umask):
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib.figure import Figure

    old = os.umask(umask)
    try:
        save_checkpoint_atomic({'w': torch.zeros(2)}, tmp_path / 'a.pth')
        write_atomic(tmp_path / 'b.json', '{}\n')
        save_figure(Figure(figsize=(1, 1)), tmp_path / 'c.png', dpi=10)
    finally:
        os.umask(old)
    for name in ('a.pth', 'b.json', 'c.png'):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a.pth', 'b.json',
                                                          'c.png']


@pytest.mark.parametrize('error', [RuntimeError, KeyboardInterrupt])
def test_a_failed_write_leaves_nothing(tmp_path, error):
    existing = tmp_path / 'keep.pth'
    existing.write_bytes(b'old')
    for out in (existing, tmp_path / 'made' / 'for' / 'it.pth'):
        with pytest.raises(error):
            with atomic_output(out) as tmp:
                tmp.write_bytes(b'half')
                raise error()
    assert existing.read_bytes() == b'old'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['keep.pth']


@pytest.mark.parametrize('kind,good,bad', [
    ('checkpoint', 'pruned.pth', 'other_config.py'),
    ('checkpoint', 'w.PT', 'w'),
    ('onnx', 'model.onnx', 'model.pth'),
    ('json', 'results.json', 'results.md'),
    ('picture', 'tokens.svg', 'tokens.pth')])
def test_an_output_is_named_for_what_it_holds(tmp_path, kind, good, bad):
    """A checkpoint written to ``other_config.py`` would be read as a config
    later: the suffix must fit, with ``force`` too; the error names the
    suffix to use."""
    check_output_suffix(good, kind)
    assert check_output_file(tmp_path / good, None, kind=kind)
    existing = tmp_path / bad
    existing.write_text('keep me')
    with pytest.raises(OutputError, match=r'e\.g\. .*--force does not'):
        check_output_file(existing, None, force=True, kind=kind)
    assert existing.read_text() == 'keep me'
    assert output_suffixes(kind)[0] in str(
        pytest.raises(OutputError, check_output_suffix, bad, kind).value)
    with pytest.raises(ValueError, match='unknown output kind'):
        output_suffixes('spreadsheet')
