"""The ten bad inputs of issue 13 that went unrefused, through the real
command lines (and the backbone's constructor): each is refused with a
message that names the problem and the fix, exits non-zero, and leaves
every file the user gave byte-identical with no temporary file behind.

Only the tools' command lines and the backbone are used here, so each test
also runs against code without the checks (where it fails)."""
from pathlib import Path

import pytest
import torch

import mmseg_pm.models  # noqa: F401
from mmseg_pm.models import PMVisionTransformer
from tests.helpers import cli_module as tool
from tests.helpers import (DENSE_TINY, SHRUNK_DATA, refused,
                           shrunk_config_text, shrunk_world, snapshot)


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """The shrunk world, an image and an unrelated checkpoint (two
    tensors)."""
    world = shrunk_world(tmp_path_factory.mktemp('bad_input'))
    world['unrelated'] = world['tmp'] / 'unrelated.pth'
    torch.save(dict(a=torch.randn(3, 3), b=torch.randn(4)),
               world['unrelated'])
    world['image'] = sorted(
        Path(world['data']['validation_img_dir']).glob('*.jpg'))[0]
    return world


@pytest.fixture
def unchanged(world):
    """Every file of the world is byte-identical afterwards, none is added
    next to them (no temporary files)."""
    before = snapshot(world['tmp'])
    yield
    assert snapshot(world['tmp']) == before


def test_prune_never_writes_over_its_config(world, unchanged, capsys):
    err = refused(tool('prune'), [
        world['pm_cfg'], world['dense'], '--out', world['pm_cfg'], '--force',
        '--iters', '1', '--device', 'cpu'], capsys)
    assert 'is the input config' in err


@pytest.mark.parametrize('target', ['image', 'checkpoint', 'existing',
                                    'read-only'])
def test_visualize_never_writes_over_a_file(world, target, tmp_path,
                                            capsys):
    out = dict(image=world['image'], checkpoint=world['pruned']).get(target)
    if out is None:
        out = tmp_path / 'tokens.png'
        out.write_bytes(b'keep me')
        if target == 'read-only':
            out.chmod(0o444)
    force = [] if target == 'existing' else ['--force']
    before = out.read_bytes()
    err = refused(tool('visualize_tokens'), [
        world['pm_cfg'], world['pruned'], world['image'], '--out', out,
        '--score-iters', '0'] + force, capsys)
    expected = dict(image='is the input image',
                    checkpoint='is the input checkpoint',
                    existing='exists; pass --force',
                    **{'read-only': 'is read-only'})[target]
    assert expected in err
    assert out.read_bytes() == before
    if target in ('existing', 'read-only'):
        assert sorted(p.name for p in tmp_path.iterdir()) == ['tokens.png']


@pytest.mark.parametrize('name,out,writes', [
    ('prune', 'other_config.py', 'a checkpoint'),
    ('export_onnx', 'model.pth', 'an ONNX model'),
    ('visualize_tokens', 'tokens.json', 'a picture'),
    ('segmenter2mmseg_pm', 'converted.onnx', 'a checkpoint'),
    ('timm2mmseg_pm', 'converted', 'a checkpoint')])
def test_an_output_must_be_named_for_what_is_written(world, unchanged,
                                                     tmp_path, name, out,
                                                     writes, capsys):
    """``tools/prune.py CONFIG CKPT --out other_config.py --force`` wrote a
    checkpoint into a .py file and exited 0: every tool that writes a file
    refuses a name whose suffix does not fit it, --force or not, and says
    which suffix to use; the file named is left as it was."""
    out = tmp_path / out
    out.write_bytes(b'keep me')
    argv = dict(
        prune=[world['pm_cfg'], world['dense'], '--out', out, '--iters', '1',
               '--device', 'cpu'],
        export_onnx=[world['pm_cfg'], world['pruned'], '--out', out],
        visualize_tokens=[world['pm_cfg'], world['pruned'], world['image'],
                          '--out', out, '--score-iters', '0'],
        segmenter2mmseg_pm=[world['unrelated'], out],
        timm2mmseg_pm=[world['unrelated'], out])[name]
    err = refused(tool(name), argv + ['--force'], capsys)
    assert f'this writes {writes}' in err and 'e.g. ' in err, err
    assert '--force does not change this' in err
    assert out.read_bytes() == b'keep me'
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_test_refuses_an_unrelated_checkpoint(world, unchanged, tmp_path,
                                              capsys):
    err = refused(tool('test'), [world['dense_cfg'], world['unrelated'],
                                 '--work-dir', tmp_path], capsys)
    assert 'is not a checkpoint of the config\'s model' in err
    assert 'random weights' in err


def test_test_refuses_a_pruned_checkpoint_with_a_dense_config(
        world, unchanged, tmp_path, capsys):
    err = refused(tool('test'), [world['dense_cfg'], world['pruned'],
                                 '--work-dir', tmp_path], capsys)
    assert 'holds Prune-and-Merge structures' in err
    assert 'use the Prune-and-Merge config' in err


def test_train_refuses_to_fine_tune_from_an_unrelated_checkpoint(
        world, unchanged, tmp_path, capsys):
    err = refused(tool('train'), [
        world['dense_cfg'], '--work-dir', tmp_path, '--cfg-options',
        f'load_from={world["unrelated"]}'], capsys)
    assert 'is not a checkpoint of the config\'s model' in err
    assert not list(tmp_path.rglob('*.pth'))


def test_train_refuses_a_negative_length(world, unchanged, tmp_path,
                                         capsys):
    err = refused(tool('train'), [
        world['dense_cfg'], '--work-dir', tmp_path, '--cfg-options',
        'train_cfg.max_iters=-3'], capsys)
    assert 'train_cfg.max_iters must be an integer >= 1, got -3' in err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.mark.parametrize('compression,message', [
    (dict(mode='layer', layers=[1.7, 2.2]), 'integer block indices, got 1.7'),
    (dict(method='tome', r=1000), 'r=1000 at block 0: the block has 65 '
     'tokens.*at most 32'),
])
def test_backbone_refuses_fractional_layers_and_impossible_merges(
        compression, message):
    with pytest.raises(ValueError, match=message):
        PMVisionTransformer(img_size=64, patch_size=8, embed_dims=32,
                            num_layers=4, num_heads=2,
                            compression=compression)


def test_structures_are_built_for_the_padded_grid():
    """68x60 with 8x8 patches: the patch embedding pads to a 9x8 grid, so
    the structures are 9x8 and the model runs at its own img_size; the
    position embedding keeps mmseg's size, so mmseg's weights load."""
    from mmseg.models.backbones import VisionTransformer
    kwargs = dict(img_size=(68, 60), patch_size=8, embed_dims=32,
                  num_layers=3, num_heads=2)
    model = PMVisionTransformer(
        compression=dict(mode='layer', layers=[1], keep_rate=0.5),
        **kwargs).eval()
    assert tuple(model.grid_size) == (9, 8)
    assert model.structures()[0].grid == (9, 8)
    model.load_state_dict(VisionTransformer(**kwargs).state_dict(),
                          strict=False)
    with torch.no_grad():
        (out, ) = model(torch.randn(1, 3, 68, 60))
        assert out.shape == (1, 32, 9, 8)
        (out, ) = model(torch.randn(1, 3, 50, 41))  # a smaller crop: padded
        assert out.shape == (1, 32, 7, 6)


TTA = """_base_ = ['{config}']
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale_factor=1.0, keep_ratio=True)],
        [dict(type='RandomFlip', prob=0.0, direction='horizontal')],
        [dict(type='LoadAnnotations')], [dict(type='PackSegInputs')]])]
"""


def test_the_checkpoint_of_the_config_evaluates(world, unchanged, tmp_path):
    """The check passes what it should: the pruned checkpoint with its own
    config, also under test-time augmentation (the model is wrapped)."""
    config = tmp_path / 'pm_tta.py'
    config.write_text(TTA.format(config=world['pm_cfg']))
    metrics = tool('test').main([str(config), str(world['pruned']),
                                 '--tta', '--work-dir', str(tmp_path)])
    assert 0 <= metrics['mIoU'] <= 100


# ----------------------------------------------------------------- long tail
def test_checkpoint_files_that_are_not_checkpoints_are_named(
        world, unchanged, tmp_path, capsys):
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(world['dense'].read_bytes()[:1000])
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    test = tool('test')
    for checkpoint, message in ((truncated, 'is not a readable PyTorch '
                                 'checkpoint (truncated'),
                                (empty, 'is empty (0 bytes)'),
                                (tmp_path, 'is a folder, not a checkpoint'),
                                (tmp_path / 'no.pth', 'not found')):
        err = refused(test, [world['dense_cfg'], checkpoint, '--work-dir',
                             tmp_path / 'work'], capsys)
        assert str(checkpoint) in err and message in err


def test_resume_names_a_truncated_last_checkpoint(world, unchanged,
                                                  tmp_path, capsys):
    """mmengine writes checkpoints in place: a run killed while saving
    leaves a truncated one for --resume to find."""
    last = tmp_path / 'iter_2.pth'
    last.write_bytes(world['dense'].read_bytes()[:2000])
    (tmp_path / 'last_checkpoint').write_text(str(last))
    err = refused(tool('train'), [world['dense_cfg'], '--work-dir', tmp_path,
                                  '--resume'], capsys)
    assert f'{last} is not a readable PyTorch checkpoint' in err


def test_outputs_are_checked_before_any_work(world, unchanged, tmp_path,
                                             capsys):
    """An --out that cannot be written is refused before the model is
    built: here the checkpoint is unrelated and would fail later."""
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    err = refused(tool('export_onnx'), [
        world['dense_cfg'], world['unrelated'], '--out',
        blocker / 'model.onnx'], capsys)
    assert 'is a file, not a folder' in err
    err = refused(tool('prune'), [
        world['pm_cfg'], world['unrelated'], '--out', blocker / 'x.pth',
        '--iters', '1'], capsys)
    assert 'is a file, not a folder' in err


@pytest.mark.parametrize('option,message', [
    ('train_cfg.max_itrs=3', 'did you mean train_cfg.max_iters?'),
    ('train_cfg.max_iters=abc', "'abc': expected an integer like the "
     "config's 2"),
    ('param_scheduler.3.end=3', 'is a list of 1 entries'),
])
def test_cfg_options_are_checked(world, unchanged, tmp_path, option,
                                 message, capsys):
    err = refused(tool('train'), [world['dense_cfg'], '--work-dir', tmp_path,
                                  '--cfg-options', option], capsys)
    assert message in err


def test_configs_that_cannot_be_read_are_one_line(world, unchanged,
                                                  tmp_path, capsys):
    text = tmp_path / 'config.txt'
    text.write_text("model = dict(type='EncoderDecoder')\n")
    broken = tmp_path / 'broken.py'
    broken.write_text('model = dict(\n')
    for config, message in ((text, 'is not a config file'),
                            (broken, 'cannot read config'),
                            (tmp_path, 'is a folder')):
        err = refused(tool('test'), [config, world['dense'], '--work-dir',
                                     tmp_path / 'work'], capsys)
        assert message in err and 'Traceback' not in err


def test_missing_or_empty_data_is_named(world, unchanged, tmp_path, capsys):
    empty = tmp_path / 'empty_data'
    (empty / 'images/validation').mkdir(parents=True)
    (empty / 'annotations/validation').mkdir(parents=True)
    for root, message in ((empty, 'holds no images'),
                          (tmp_path / 'nowhere', 'does not exist')):
        err = refused(tool('test'), [
            world['dense_cfg'], world['dense'], '--work-dir', tmp_path,
            '--cfg-options', f'test_dataloader.dataset.data_root={root}'],
            capsys)
        assert message in err and 'make_synthetic_ade.py' in err


def test_predictions_never_land_on_the_data(world, unchanged, tmp_path,
                                            capsys):
    annotations = world['data']['validation_ann_dir']
    err = refused(tool('test'), [world['dense_cfg'], world['dense'], '--out',
                                 annotations, '--force', '--work-dir',
                                 tmp_path], capsys)
    assert 'is the input test annotation folder' in err
    taken = tmp_path / 'preds'
    taken.mkdir()
    (taken / 'old.png').write_bytes(b'x')
    err = refused(tool('test'), [world['dense_cfg'], world['dense'], '--out',
                                 taken, '--work-dir', tmp_path], capsys)
    assert 'already holds files; pass --force' in err


def test_train_never_saves_over_the_checkpoint_it_starts_from(
        world, unchanged, tmp_path, capsys):
    start = tmp_path / 'iter_2.pth'
    start.write_bytes(world['dense'].read_bytes())
    err = refused(tool('train'), [world['dense_cfg'], '--work-dir', tmp_path,
                                  '--cfg-options', f'load_from={start}'],
                  capsys)
    assert 'where this run saves its own iter_2.pth' in err
    assert start.read_bytes() == world['dense'].read_bytes()


@pytest.mark.parametrize('name,argv,message', [
    ('export_onnx', ['--shape', '0', '0'], 'argument --shape: must be >= 1'),
    ('export_onnx', ['--batch-size', '0'], 'argument --batch-size: must be'),
    ('export_onnx', ['--shape', '4', '4'], 'smaller than one 8x8 patch'),
    ('visualize_tokens', ['--dpi', '-5'], 'argument --dpi: must be >= 1'),
])
def test_numbers_are_checked_at_parsing(world, unchanged, tmp_path, name,
                                        argv, message, capsys):
    inputs = [world['pm_cfg'], world['pruned']] + \
        ([world['image']] if name == 'visualize_tokens' else [])
    out = tmp_path / ('out.onnx' if name == 'export_onnx' else 'out.png')
    err = refused(tool(name), inputs + ['--out', out] + argv, capsys)
    assert message in err
    assert not any(tmp_path.iterdir())


def test_counts_of_benchmark_and_data_generator(tmp_path, capsys):
    from mmseg_pm.cli.benchmark import main as benchmark
    with pytest.raises(SystemExit):
        benchmark([str(DENSE_TINY), '--keep-rates', '0', '--out-dir',
                   str(tmp_path)])
    assert 'argument --keep-rates: must be in (0, 1], got 0' in \
        capsys.readouterr().err
    err = refused(tool('make_synthetic_ade'),
                  [tmp_path / 'data', '--num-train', '0'], capsys)
    assert 'argument --num-train: must be >= 1, got 0' in err
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------ issue 30
def one_line(message) -> str:
    """The tool's error: one line (besides argparse's usage and progress
    bars), no traceback."""
    errors = [ln for ln in str(message).splitlines() if 'error:' in ln]
    assert len(errors) == 1 and 'Traceback' not in message, message
    return errors[0]


@pytest.mark.parametrize('key,value,message', [
    ('stride', '(0,0)', r'stride=\(0, 0\): slide inference needs a stride of'
     r' two positive integers'),
    ('crop_size', '(-64,64)', r'crop_size=\(-64, 64\): slide inference '
     'needs a crop_size of two positive integers'),
    ('stride', '(96,96)', r'stride=\(96, 96\) is larger than '
     r'crop_size=\(64, 64\): the windows would leave pixels without a '
     'prediction'),
])
def test_bad_slide_settings_are_one_line(world, unchanged, tmp_path, key,
                                         value, message, capsys):
    import re
    err = refused(tool('test'), [
        world['dense_cfg'], world['dense'], '--work-dir', tmp_path,
        '--cfg-options', f'model.test_cfg.{key}={value}'], capsys)
    assert re.search(message, one_line(err)), err
    assert not any(tmp_path.iterdir())


def test_an_impossible_picture_size_is_one_line(world, unchanged, tmp_path,
                                                capsys):
    err = refused(tool('visualize_tokens'), [
        world['pm_cfg'], world['pruned'], world['image'], '--out',
        tmp_path / 'tokens.png', '--score-iters', '0', '--dpi', '20000'],
        capsys)
    assert 'pixels, more than the 100,000,000 a picture may have; use ' \
        'dpi <= ' in one_line(err)
    assert not any(tmp_path.iterdir())


def test_report_inputs_of_the_wrong_kind_are_named(tmp_path, capsys):
    from tests.helpers import ROOT
    study = ROOT / 'benchmarks/study/results.json'
    bench = ROOT / 'benchmarks/plane_vit-s_512_cpu.json'
    for argv, message in (
            (['--study', bench, '--benchmark', bench],
             f"--study {bench} is not the results.json of tools/study.py: "
             "it lacks ['dense']"),
            (['--study', study, '--benchmark', study],
             f'--benchmark {study} is not the .json of tools/benchmark.py')):
        err = refused(tool('speed_quality'),
                      argv + ['--out-dir', tmp_path], capsys)
        assert message in one_line(err) and 'were the two inputs swapped?' \
            in err
    assert not any(tmp_path.iterdir())


def test_benchmark_parts_names_a_tool_and_options_that_exist(
        world, tmp_path, capsys):
    """A ToMe config: the parts timed are Prune and Merge's; the message
    names a command that takes this config, and that command parses."""
    config = tmp_path / 'tome.py'
    config.write_text(shrunk_config_text("dict(method='tome', r=2)", 150))
    err = one_line(refused(tool('benchmark_parts'), [
        config, '--out-dir', tmp_path / 'out'], capsys))
    assert "compresses with method='tome'" in err
    command = err.split('time this one whole with tools/benchmark.py ')[1]
    args = tool('benchmark').build_parser().parse_args(command.split())
    assert args.variants == ['config'] and args.configs == [str(config)]
    assert not (tmp_path / 'out').exists()


def test_prune_checks_the_depth_weight_before_loading(world, unchanged,
                                                      tmp_path, capsys):
    """The checkpoint is unrelated: it would be refused once loaded."""
    err = one_line(refused(tool('prune'), [
        world['pm_cfg'], world['unrelated'], '--out', tmp_path / 'x.pth',
        '--depth-lambda', '1.0', '--iters', '1', '--device', 'cpu'], capsys))
    assert 'depth_lambda=1.0 gives a non-positive depth weight' in err
    assert not any(tmp_path.iterdir())


def test_resume_with_nothing_to_resume_stops(world, unchanged, tmp_path,
                                             capsys):
    work = tmp_path / 'mistyped'
    err = one_line(refused(tool('train'), [
        world['dense_cfg'], '--work-dir', work, '--resume'], capsys))
    assert f'--resume: the work dir {work} holds no run to resume' in err
    assert not work.exists()


def test_a_compression_without_blocks_says_what_is_missing(
        world, unchanged, tmp_path, capsys):
    """The dense config given only a keep rate: its backbone takes no
    compression; ours needs the blocks to compress."""
    base = ['--work-dir', tmp_path, '--cfg-options',
            'model.backbone.compression.keep_rate=0.5']
    err = one_line(refused(tool('test'), [world['dense_cfg'], world['dense'],
                                          *base], capsys))
    assert "model.backbone is type='VisionTransformer', which takes no " \
        "compression=; set model.backbone.type='PMVisionTransformer'" in err
    err = one_line(refused(tool('test'), [
        world['dense_cfg'], world['dense'], *base,
        'model.backbone.type=PMVisionTransformer'], capsys))
    assert "compression sets ['keep_rate'] but names no blocks to compress:"\
        ' Prune and Merge needs layers=[...]' in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize('compression,message', [
    ("dict(method='hourglass', alpha=1, clusters=2, temperature=nan)",
     'temperature must be a finite number, got nan'),
    ("dict(method='algm', threshold=1.5, global_layer=1)",
     r'threshold must be in \[-1, 1\], got 1.5'),
    ("dict(method='algm', window=(16, 16), global_layer=1)",
     r'window=\(16, 16\) is larger than the 8x8 token grid of '
     r'img_size=\(64, 64\)'),
    ("dict(method='hourglass', alpha=1, clusters=(20, 20))",
     r'clusters=\(20, 20\) is larger than the 8x8 token grid of '
     r'img_size=\(64, 64\)'),
])
def test_settings_that_would_do_nothing_are_refused_by_the_tools(
        world, unchanged, tmp_path, compression, message, capsys):
    import re
    config = tmp_path / 'config.py'
    config.write_text("nan = float('nan')\n" + shrunk_config_text(
        compression, 150) + SHRUNK_DATA.format(data=world['root']))
    err = one_line(refused(tool('test'), [config, world['dense'],
                                          '--work-dir', tmp_path / 'w'],
                           capsys))
    assert re.search('model.backbone.compression is invalid: ' + message,
                     err), err
    assert not (tmp_path / 'w').exists()


def test_a_full_disk_while_pruning_is_one_line(world, unchanged, tmp_path):
    """tools/prune.py where files cannot grow past 50 kB (the checkpoint
    is 240 kB): torch's writer fails with a RuntimeError; the tool says so
    in one line, status 1, and leaves no file."""
    import os
    import subprocess
    import sys

    from tests.helpers import ROOT
    from tests.utils.test_outputs import limited_file_size

    out = tmp_path / 'out'
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tools/prune.py'), str(world['pm_cfg']),
         str(world['dense']), '--out', str(out / 'pruned.pth'), '--iters',
         '1', '--device', 'cpu'], cwd=tmp_path, capture_output=True,
        text=True, timeout=600, preexec_fn=limited_file_size,
        env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1'))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f'prune.py: error: cannot write {out / "pruned.pth"}: the disk is '
        'full, over quota or over a file-size limit; no partly written '
        'output is left: free space or choose another location')
    assert 'Traceback' not in proc.stderr
    assert not any(tmp_path.iterdir())


def test_two_prunes_writing_the_same_new_out(world, unchanged, tmp_path,
                                             monkeypatch, capsys):
    """Another run writes --out while this one scores: this one is
    refused, the other's file is kept (the last rename does not win)."""
    from mmseg_pm.cli import prune as prune_cli

    out = tmp_path / 'pruned.pth'
    search = prune_cli.prune_segmentor

    def other_run_finishes_first(*args, **kwargs):
        result = search(*args, **kwargs)
        out.write_bytes(b'the other run')
        return result

    monkeypatch.setattr(prune_cli, 'prune_segmentor',
                        other_run_finishes_first)
    err = one_line(refused(prune_cli, [
        world['pm_cfg'], world['dense'], '--out', out, '--iters', '1',
        '--device', 'cpu'], capsys))
    assert f'{out} was written by another run while this one worked; it is '\
        "kept and this run's result is not" in err
    assert out.read_bytes() == b'the other run'
    assert [p.name for p in tmp_path.iterdir()] == ['pruned.pth']


LARGER = [str(a) for a in ('--shape', 128, 128)]


def test_export_at_a_larger_shape_than_the_grid(world, unchanged, tmp_path):
    """Prune and Merge runs any input size: a 128 x 128 graph of a 64 x 64
    model (its structures made for 16 x 16 tokens by the same rule)."""
    out = tmp_path / 'model.onnx'
    report = tool('export_onnx').main([
        str(world['pm_cfg']), str(world['pruned']), '--out', str(out),
        *LARGER])
    assert report['shape'] == (128, 128) and out.is_file()


def bad_annotation(path):
    """A label of 200 (class 199 of 150 after reduce_zero_label) in one
    pixel of the annotation at ``path``."""
    import numpy as np
    from PIL import Image
    labels = np.array(Image.open(path))
    labels[3, 5] = 200
    Image.fromarray(labels).save(path)


def test_a_bad_validation_annotation_outside_a_sample_is_named(
        world, tmp_path, capsys):
    """40 validation images; the bad one is one a sample of 32 spread over
    them (what was checked before) skips: the mIoU would drop it."""
    from mmseg_pm.datasets import make_synthetic_ade
    data = make_synthetic_ade(tmp_path / 'data', num_train=1, num_val=40,
                              size=(16, 16), seed=2, progress=False)
    sampled = {round(i * 39 / 31) for i in range(32)}
    index = min(set(range(40)) - sampled)
    annotations = sorted(Path(data['validation_ann_dir']).iterdir())
    bad_annotation(annotations[index])
    err = one_line(refused(tool('test'), [
        world['dense_cfg'], world['dense'], '--work-dir', tmp_path / 'w',
        '--cfg-options', f'test_dataloader.dataset.data_root={data["root"]}'],
        capsys))
    assert f'the annotation {annotations[index]} holds the label 200, ' \
        'class index 199, but there are 150 classes' in err
    assert "fix the annotation, or the config's num_classes" in err
    assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('name', ['train', 'prune'])
def test_a_bad_training_annotation_is_named_before_any_work(
        world, tmp_path, name, capsys):
    from mmseg_pm.datasets import make_synthetic_ade
    data = make_synthetic_ade(tmp_path / 'data', num_train=6, num_val=1,
                              size=(64, 64), seed=2, progress=False)
    annotation = sorted(Path(data['training_ann_dir']).iterdir())[4]
    bad_annotation(annotation)
    options = ['--cfg-options'] + [
        f'{s}_dataloader.dataset.data_root={data["root"]}'
        for s in ('train', 'val')]
    argv = dict(
        train=[world['dense_cfg'], '--work-dir', tmp_path / 'w', *options],
        prune=[world['pm_cfg'], world['dense'], '--out', tmp_path / 'w.pth',
               '--iters', '1', '--device', 'cpu', *options])[name]
    err = one_line(refused(tool(name), argv, capsys))
    assert f'train_dataloader: the annotation {annotation} holds the label ' \
        '200, class index 199' in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['data']
