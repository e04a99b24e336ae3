"""Reading, checking and writing configs: every failure one line that
names the problem and the fix (a :class:`UsageError`), checked before a
Runner is built or any work starts."""
import copy
import difflib
import inspect
import re
from pathlib import Path

from mmengine.config import Config
from mmengine.runner import Runner
from mmseg.registry import MODELS, RUNNERS

import mmseg_pm.models  # noqa: F401  (the modules and the mmseg:: scope)
from mmseg_pm.compression.config import build_reducer, parse_compression
from mmseg_pm.engine import use_project_writers
from mmseg_pm.models.backbones.pm_vit import (PMVisionTransformer,
                                              image_size, token_grid)
from mmseg_pm.utils.errors import UsageError
from mmseg_pm.utils.outputs import atomic_output, check_output_dir, is_url

# checkpoints mmengine's CheckpointHook writes into the work dir
RUNNER_CHECKPOINT = re.compile(r'(iter|epoch)_\d+\.pth|best_.*\.pth')


def read_config(path: str) -> Config:
    """``Config.fromfile`` with every failure as one line naming the file.
    Registers the project's modules and the ``mmseg::`` scope first."""
    file = Path(path)
    if file.is_dir():
        raise UsageError(f'config {path} is a folder; name a .py config '
                         'file')
    if not file.is_file():
        raise UsageError(f'config file not found: {path}')
    if file.suffix not in ('.py', '.json', '.yaml', '.yml'):
        raise UsageError(f'config {path} is not a config file: mmengine '
                         'reads .py (or .json/.yaml) configs')
    try:
        return Config.fromfile(str(file))
    except Exception as err:  # syntax errors, missing _base_, imports...
        reason = (str(err).strip().splitlines() or [''])[0][:300]
        raise UsageError(f'cannot read config {path}: '
                         f'{type(err).__name__}: {reason}') from err


def _kind(value) -> str:
    if value is None:
        return 'none'
    for kind, types in (('bool', bool), ('int', int), ('float', float),
                        ('str', str)):
        if isinstance(value, types):
            return kind
    return 'other'


def _check_option_type(key: str, old, new) -> None:
    """Scalars keep their kind: an int stays an int, a number a number,
    a flag a flag, text text. None and containers are left alone."""
    old_kind, new_kind = _kind(old), _kind(new)
    if 'none' in (old_kind, new_kind) or 'other' in (old_kind, new_kind) \
            or old_kind == new_kind or (old_kind, new_kind) == ('float',
                                                               'int'):
        return
    wanted = dict(bool='True or False', int='an integer',
                  float='a number', str='text')[old_kind]
    raise UsageError(f'--cfg-options {key}={new!r}: expected {wanted} like '
                     f'the config\'s {old!r}')


def check_cfg_option(cfg: Config, key: str, value) -> None:
    """Refuse an override whose path has a typo (a name close to an
    existing one), indexes past a list, or changes a value's kind. New
    names unlike any existing one are allowed (new arguments)."""
    node, parts = cfg, key.split('.')
    for depth, part in enumerate(parts):
        where = '.'.join(parts[:depth]) or 'the config'
        if isinstance(node, (list, tuple)):
            if not part.isdigit() or int(part) >= len(node):
                raise UsageError(
                    f'--cfg-options {key}: {where} is a list of {len(node)} '
                    f'entries; index it with 0..{len(node) - 1}')
            node = node[int(part)]
        elif isinstance(node, (dict, Config)):
            if part not in node:
                close = difflib.get_close_matches(
                    part, [str(k) for k in node.keys()], n=1, cutoff=0.8)
                if close:
                    name = '.'.join(parts[:depth] + close)
                    raise UsageError(
                        f'--cfg-options {key}: {where} has no {part!r}; '
                        f'did you mean {name}?')
                return
            node = node[part]
        else:
            return  # None or a scalar replaced by a dict: mmengine decides
    _check_option_type(key, node, value)


def load_config(path: str, cfg_options, launcher: str = 'none') -> Config:
    """Read the config and apply command-line overrides (checked first);
    the model is checked on the result (:func:`check_model`); the Runner's
    files are written by the project's atomic, rank-0 writers
    (:func:`mmseg_pm.engine.use_project_writers`)."""
    cfg = read_config(path)
    cfg.launcher = launcher
    if cfg_options is not None and not isinstance(cfg_options, dict):
        raise UsageError(
            f'cfg_options must be a dict like {{"train_cfg.max_iters": 10}}, '
            f'got {type(cfg_options).__name__} {cfg_options!r}')
    if cfg_options:
        for key, value in cfg_options.items():
            check_cfg_option(cfg, key, value)
        try:
            cfg.merge_from_dict(cfg_options)
        except Exception as err:
            raise UsageError(f'--cfg-options: {err}') from err
    if not isinstance(cfg.get('model'), dict):
        raise UsageError(f'config {path} defines no model=dict(type=..., '
                         '...); start from a config in configs/ (e.g. '
                         "_base_ = ['configs/segmenter/...py'])")
    check_model(cfg)
    use_project_writers(cfg)
    return cfg


def _compressed_backbones(node, path: str):
    """(config path, dict) of every dict under ``node`` with a
    ``compression`` entry (student and teacher of a distillation too)."""
    if isinstance(node, dict):
        if node.get('compression') is not None:
            yield path, node
        for key, value in node.items():
            yield from _compressed_backbones(value, f'{path}.{key}')
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _compressed_backbones(value, f'{path}.{i}')


def check_takes_compression(kind, path: str) -> None:
    """A module given ``compression=`` must be this project's backbone (a
    type mmseg does not know is left to mmseg's own message)."""
    module = kind if isinstance(kind, type) else MODELS.get(kind) \
        if isinstance(kind, str) else None
    if module is None or issubclass(module, PMVisionTransformer):
        return
    raise UsageError(
        f'{path} is type={getattr(module, "__name__", kind)!r}, which takes '
        f"no compression=; set {path}.type='PMVisionTransformer' (the same "
        'arguments, with token compression) or leave compression out')


def check_compression(cfg: Config) -> None:
    """Every backbone's ``compression=`` parsed and its reducer built for
    the backbone's token grid, as the backbone's constructor does: a bad
    one (blocks outside the model, prune_rate=1.0, overlapping or reversed
    spans, more ToMe merges than tokens) is one line, for every tool and
    :func:`~mmseg_pm.apis.init_segmentor`, before anything is built."""
    defaults = {name: p.default for name, p in inspect.signature(
        PMVisionTransformer.__init__).parameters.items()}
    for path, backbone in _compressed_backbones(cfg.get('model'), 'model'):
        check_takes_compression(backbone.get('type'), path)
        args = dict(defaults, **{k: v for k, v in backbone.items()
                                 if k in defaults})
        try:
            parsed = parse_compression(dict(backbone['compression']),
                                       args['num_layers'])
            size = image_size(args['img_size'])
            build_reducer(parsed, token_grid(size, args['patch_size'],
                                             args['patch_pad']),
                          args['embed_dims'], args['with_cls_token'], size)
        except (ValueError, TypeError, KeyError) as err:
            raise UsageError(
                f'{path}.compression is invalid: {err} (fix the config, or '
                f'override it with --cfg-options {path}.compression.KEY='
                'VALUE)') from err


def _positive_pair(value) -> bool:
    """(H, W) of positive integers (mmseg unpacks a crop size and a stride
    into two)."""
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0
        for v in value)


def check_slide_settings(test_cfg, path: str = 'model.test_cfg') -> None:
    """Slide inference's crop_size and stride: positive sizes, and a stride
    no larger than the crop (mmseg divides by the stride, and windows
    further apart than a crop leave pixels without a prediction)."""
    if not isinstance(test_cfg, dict) or test_cfg.get('mode') != 'slide':
        return
    for key in ('crop_size', 'stride'):
        value = test_cfg.get(key)
        if not _positive_pair(value):
            raise UsageError(
                f'{path}.{key}={value!r}: slide inference needs a {key} of '
                'two positive integers (H, W); set it with --cfg-options '
                f'{path}.{key}="(H,W)"')
    crop, stride = test_cfg['crop_size'], test_cfg['stride']
    if stride[0] > crop[0] or stride[1] > crop[1]:
        raise UsageError(
            f'{path}.stride={tuple(stride)} is larger than crop_size='
            f'{tuple(crop)}: the windows would leave pixels without a '
            f'prediction; use a stride of at most {tuple(crop)} (e.g. 2/3 of'
            ' the crop)')


def check_model(cfg: Config) -> None:
    """What is checked of a model config before it is built: every
    backbone's ``compression=`` and the slide inference settings."""
    check_compression(cfg)
    check_slide_settings(cfg.model.get('test_cfg'))


def scaled_schedule(schedulers: list, from_iters: int, to_iters: int
                    ) -> list:
    """Iteration-based ``schedulers`` written for a ``from_iters``-iteration
    run, stretched to ``to_iters``: every begin and end scaled and rounded,
    a boundary after the start to one iteration at least (a warm-up stays
    a warm-up); a scheduler left without iterations is dropped (mmengine
    refuses one)."""
    def scale(i):
        return 0 if i == 0 else max(1, round(i * to_iters / from_iters))

    out = []
    for s in schedulers:
        s = copy.deepcopy(dict(s))
        if s.get('by_epoch', True):
            raise ValueError(f'{s["type"]} counts epochs; stretching a '
                             'schedule needs iteration-based schedulers '
                             '(by_epoch=False)')
        s['begin'] = scale(s.get('begin', 0))
        s['end'] = scale(s.get('end', from_iters))
        if s['end'] > s['begin']:
            out.append(s)
    return out


def write_config(cfg: Config, path) -> Path:
    """``cfg`` dumped to ``path`` (a self-contained .py config), written to
    a temporary sibling first and then renamed."""
    with atomic_output(path) as tmp:
        cfg.dump(str(tmp))
    return Path(path)


def resolve_work_dir(cfg: Config, cli_work_dir, config_path: str) -> None:
    """Work dir priority: CLI > config > ./work_dirs/<config stem>."""
    if cli_work_dir is not None:
        cfg.work_dir = cli_work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = str(Path('./work_dirs') / Path(config_path).stem)


def build_runner(cfg: Config) -> Runner:
    """Default Runner, or a registered one named by ``runner_type``."""
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


# ------------------------------------------------------------ config checks
def check_loop_config(cfg: Config, loaders) -> None:
    """Counts that must be >= 1 (a train loop of -3 iterations would exit 0
    having done nothing): the train loop's length and validation interval,
    the batch size of every dataloader in ``loaders``."""
    checks = []
    if 'train_dataloader' in loaders and isinstance(cfg.get('train_cfg'),
                                                     dict):
        checks += [(f'train_cfg.{k}', cfg.train_cfg.get(k))
                   for k in ('max_iters', 'max_epochs', 'val_interval')]
    checks += [(f'{name}.batch_size', (cfg.get(name) or {}).get('batch_size'))
               for name in loaders]
    for name, value in checks:
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) \
                or value < 1:
            raise UsageError(f'{name} must be an integer >= 1, got {value!r}'
                             f' (set it with --cfg-options {name}=N)')


def dataset_folders(dataset: dict) -> list:
    """(label, folder) of the local image and annotation folders of an mmseg
    dataset config (``data_root`` + ``data_prefix``), wrappers unwrapped."""
    if not isinstance(dataset, dict):
        return []
    inner = dataset.get('dataset') or dataset.get('datasets')
    if inner is not None:
        inner = inner if isinstance(inner, (list, tuple)) else [inner]
        return [f for d in inner for f in dataset_folders(d)]
    root = dataset.get('data_root') or ''
    prefix = dataset.get('data_prefix') or {}
    folders = []
    for key, label in (('img_path', 'image'), ('seg_map_path', 'annotation')):
        sub = prefix.get(key) if isinstance(prefix, dict) else None
        if isinstance(sub, str) and not is_url(root) and not is_url(sub):
            folders.append((f'{label} folder', Path(root) / sub))
    return folders


def check_data_folders(cfg: Config, loaders) -> dict:
    """The image and annotation folders of ``loaders`` exist and the image
    folders hold files; returns them as {label: folder}."""
    found = {}
    for name in loaders:
        dataset = (cfg.get(name) or {}).get('dataset')
        for label, folder in dataset_folders(dataset):
            fix = (f'make the data first (e.g. python tools/'
                   f'make_synthetic_ade.py ROOT) or point the config at it '
                   f'(--cfg-options {name}.dataset.data_root=ROOT)')
            if not folder.is_dir():
                raise UsageError(f'{name}: the {label} {folder} does not '
                                 f'exist; {fix}')
            if label.startswith('image') and not any(
                    p.is_file() for p in folder.rglob('*')):
                raise UsageError(f'{name}: the {label} {folder} holds no '
                                 f'images; {fix}')
            found[f'{name.split("_")[0]} {label}'] = folder
    return found


def check_runner_inputs(cfg: Config, config_path: str, loaders,
                        out_dirs=None) -> None:
    """Everything a train or test run is given, checked before the Runner
    is built: loop counts, data folders and the data in them
    (:func:`mmseg_pm.apis.data.check_datasets`), the checkpoint file (a URL is
    downloaded and ``load_from`` pointed at the local copy) and the folders
    the run writes (``out_dirs``: {flag: folder}), which must be writable
    and none of the inputs."""
    from mmseg_pm.utils.checkpoint import local_checkpoint

    from .data import check_datasets

    check_loop_config(cfg, loaders)
    inputs = dict(check_data_folders(cfg, loaders), config=config_path)
    check_datasets(cfg, loaders)
    if cfg.get('load_from'):
        cfg.load_from = str(local_checkpoint(cfg.load_from))
        inputs['checkpoint'] = cfg.load_from
    check_work_dir(cfg, inputs)
    for flag, folder in (out_dirs or {}).items():
        if folder is not None:
            check_output_dir(folder, inputs, flag)


def check_work_dir(cfg: Config, inputs=None) -> None:
    """The work dir is writable and is none of the inputs; and the Runner
    will not write over the checkpoint it starts from (mmengine names its
    checkpoints iter_N.pth, and a fresh run in the same work dir saves
    them again)."""
    check_output_dir(cfg.work_dir, inputs, flag='--work-dir')
    load_from = cfg.get('load_from')
    if not load_from or is_url(load_from) or cfg.get('resume'):
        return
    source = Path(load_from).resolve()
    if source.parent == Path(cfg.work_dir).resolve() and \
            RUNNER_CHECKPOINT.fullmatch(source.name):
        raise UsageError(
            f'load_from {load_from} lies in the work dir {cfg.work_dir}, '
            f'where this run saves its own {source.name}; copy it elsewhere '
            'or pass another --work-dir (or --resume to continue that run)')


def configs_dir() -> Path:
    """The project's configs: the repository's configs/, which the package
    carries as ``mmseg_pm/configs`` (a link in a checkout, copies in an
    installed wheel)."""
    return Path(__file__).resolve().parents[1] / 'configs'


# The synthetic tiny Segmenter of the demo and the study: dense, with
# Prune and Merge, and its distillation settings.
CONFIGS = configs_dir()
DENSE_CONFIG = CONFIGS / 'synthetic/segmenter_vit-tiny_mask_synthetic-ade-64x64.py'  # noqa: E501
PM_CONFIG = CONFIGS / 'synthetic/pm-segmenter_vit-tiny_mask_synthetic-ade-64x64.py'  # noqa: E501
DISTILL_CONFIG = CONFIGS / 'distill/distill-pm-segmenter_vit-tiny_mask_synthetic-ade-64x64.py'  # noqa: E501
