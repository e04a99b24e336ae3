"""The data a run is given, checked before any work starts.

mmseg finds a bad sample only when it loads it: a label outside the
classes is scored as nothing (dropped from the mIoU, exit 0) by
tools/test.py and stops training and scoring with ``IndexError``; an
annotation of another size is found at the first validation, after
training iterations and a saved checkpoint; a damaged image ends in an
``AssertionError``; an empty annotation folder in a ``FileNotFoundError``.
:func:`check_datasets` reads each data set's index the way mmseg does and
checks every pair, none left out: its annotation exists, image and
annotation decode, have the same size and hold only labels below the
number of classes or the ignore index, after the data set's own label
mapping (``reduce_zero_label``, then ``label_map``). The first bad file is
named with the fix.

Each pair is read once per process: the files are decoded in parallel
threads (the decoders release the GIL) under a progress bar, and what a
check needs of a pair (sizes, the label values present) is kept by file,
so a run that checks the same data again (train, then test; every row of
the study) only looks at the files' sizes and times.
"""
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Optional, Tuple

import numpy as np
from tqdm import tqdm

from mmseg_pm.utils.errors import UsageError

# threads decoding pairs, and the seconds before a check shows its bar
READERS = min(8, os.cpu_count() or 1)
PROGRESS_DELAY = 1.0


class DataError(UsageError):
    """A data set a run cannot use as it is (the message names the first
    bad file and the fix)."""


def leaf_datasets(dataset) -> List[dict]:
    """The plain data set configs inside wrappers (Concat, Repeat...)."""
    if not isinstance(dataset, dict):
        return []
    inner = dataset.get('dataset') or dataset.get('datasets')
    if inner is None:
        return [dataset]
    inner = inner if isinstance(inner, (list, tuple)) else [inner]
    return [leaf for d in inner for leaf in leaf_datasets(d)]


def model_num_classes(cfg) -> Optional[int]:
    """The decode head's ``num_classes`` (what the loss indexes), if the
    config states one."""
    head = (cfg.get('model') or {}).get('decode_head')
    heads = head if isinstance(head, (list, tuple)) else [head]
    counts = [h.get('num_classes') for h in heads if isinstance(h, dict)]
    counts = [c for c in counts if isinstance(c, int)]
    return min(counts) if counts else None


def mmseg_labels(annotation: np.ndarray, reduce_zero_label: bool,
                 label_map: Optional[dict]) -> np.ndarray:
    """The class indices mmseg's LoadAnnotations makes of an annotation
    (uint8; reduce_zero_label first: 0 and 255 become 255, k becomes
    k - 1; then label_map)."""
    labels = annotation.astype(np.uint8)
    if reduce_zero_label:
        labels = np.where((labels == 0) | (labels == 255), 255,
                          labels.astype(np.int64) - 1).astype(np.uint8)
    if label_map:
        mapped = labels.copy()
        for old, new in label_map.items():
            mapped[labels == old] = new
        labels = mapped
    return labels


def _decode(path: str, flag: str, backend: str):
    import mmcv
    try:
        return mmcv.imfrombytes(Path(path).read_bytes(), flag=flag,
                                backend=backend)
    except Exception:  # PIL / cv2 errors of damaged files have many types
        return None


def _build_index(dataset_cfg: dict, loader: str):
    """The data set of ``dataset_cfg`` (no pipeline) and its data list."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    init_default_scope('mmseg')
    try:
        dataset = DATASETS.build(dict(dataset_cfg, pipeline=[],
                                      lazy_init=True))
        return dataset, dataset.load_data_list()
    except Exception as err:
        reason = (str(err).strip().splitlines() or [''])[0][:200]
        raise DataError(f'{loader}: cannot list the data set '
                        f'({type(err).__name__}: {reason}); check its '
                        'data_root and data_prefix') from err


class PairFacts(NamedTuple):
    """What the checks need of one image and its annotation: the image's
    (H, W) (None: it does not decode), the annotation's (None: it does not
    decode, or there is none), its channels, and which stored values 0..255
    it holds (a mask of 256)."""

    image_hw: Optional[Tuple[int, int]]
    annotation_hw: Optional[Tuple[int, int]]
    channels: int
    values: Optional[np.ndarray]


# (image, annotation, their sizes and times) -> facts: each file read once
_READ: Dict[tuple, PairFacts] = {}


def _identity(path: Optional[str]) -> tuple:
    if path is None:
        return (None, )
    info = os.stat(path)
    return (path, info.st_size, info.st_mtime_ns)


def read_pair(image: str, annotation: Optional[str]) -> PairFacts:
    """Decode a pair as mmseg's loaders do (once per process while the
    files are unchanged) and keep what the checks need."""
    key = _identity(image) + _identity(annotation)
    if key in _READ:
        return _READ[key]
    pixels = _decode(image, 'color', 'cv2')
    image_hw = None if pixels is None else tuple(pixels.shape[:2])
    raw = None if annotation is None else \
        _decode(annotation, 'unchanged', 'pillow')
    if raw is None:
        facts = PairFacts(image_hw, None, 0, None)
    else:
        raw = np.squeeze(raw)
        values = np.bincount(raw.astype(np.uint8).ravel(),
                             minlength=256) > 0 if raw.ndim == 2 else None
        facts = PairFacts(image_hw, tuple(raw.shape[:2]),
                          1 if raw.ndim == 2 else raw.shape[-1], values)
    _READ[key] = facts
    return facts


def check_pair(facts: PairFacts, image: str, annotation: Optional[str],
               loader: str, num_classes: int, ignore_index: int,
               reduce_zero_label: bool, label_map: Optional[dict]) -> None:
    """One image (and its annotation) decodes, the two sizes agree, and
    every label is a class index or the ignore index."""
    if facts.image_hw is None:
        raise DataError(f'{loader}: the image {image} cannot be decoded '
                        '(damaged, empty or not an image); replace or '
                        'remove it')
    if annotation is None:
        return
    if facts.annotation_hw is None:
        raise DataError(f'{loader}: the annotation {annotation} cannot be '
                        'decoded (damaged, empty or not an image); replace '
                        'or remove it and its image')
    if facts.channels != 1:
        raise DataError(f'{loader}: the annotation {annotation} has '
                        f'{facts.channels} channels; a label map is one '
                        'channel of class indices (an 8-bit grey or '
                        'palette PNG)')
    (h, w), (ih, iw) = facts.annotation_hw, facts.image_hw
    if (h, w) != (ih, iw):
        raise DataError(f'{loader}: the annotation {annotation} is '
                        f'{h}x{w} but its image {image} is {ih}x{iw}; an '
                        'annotation labels its image pixel for pixel, so '
                        'make them the same size')
    stored = np.flatnonzero(facts.values).astype(np.uint8)
    labels = mmseg_labels(stored, reduce_zero_label, label_map)
    bad = (labels >= num_classes) & (labels != ignore_index)
    if bad.any():
        first = int(np.argmax(bad))
        how = (f' (the data set has reduce_zero_label=True: stored values '
               f'1..{num_classes} are the classes, 0 and {ignore_index} '
               'are ignored)' if reduce_zero_label else
               f' (classes 0..{num_classes - 1}, {ignore_index} = ignored)')
        raise DataError(
            f'{loader}: the annotation {annotation} holds the label '
            f'{int(stored[first])}, class index {int(labels[first])}, but '
            f'there are {num_classes} classes{how}; fix the annotation, or '
            'the config\'s num_classes and classes')


def check_dataset(dataset_cfg: dict, loader: str,
                  num_classes: Optional[int] = None) -> int:
    """Check one data set config (see the module docstring); returns the
    number of pairs."""
    dataset, items = _build_index(dataset_cfg, loader)
    folder = dataset.data_prefix.get('img_path', '')
    if not items:
        raise DataError(f'{loader}: no images ending in {dataset.img_suffix}'
                        f' in {folder}; put the images there or set '
                        f'{loader}.dataset.img_suffix')
    classes = len(dataset.metainfo.get('classes') or ()) or None
    limits = [n for n in (classes, num_classes) if n]
    num_classes = min(limits) if limits else 256
    with_labels = 'seg_map_path' in items[0]  # no labels: format only
    if with_labels:
        for item in items:
            if not Path(item['seg_map_path']).is_file():
                raise DataError(
                    f'{loader}: the image {item["img_path"]} has no '
                    f'annotation {item["seg_map_path"]}; each image needs '
                    f'one (same name, {dataset.seg_map_suffix}), so add it '
                    'or remove the image')
    pairs = [(item['img_path'], item['seg_map_path'] if with_labels
              else None) for item in items]
    with closing(_read_all(pairs, loader)) as read:
        for item, (image, annotation), facts in zip(items, pairs, read):
            check_pair(facts, image, annotation, loader, num_classes,
                       dataset.ignore_index,
                       item.get('reduce_zero_label',
                                dataset.reduce_zero_label),
                       item.get('label_map', dataset.label_map))
    return len(items)


def _read_all(pairs: List[tuple], loader: str):
    """The facts of every pair, in order, read by :data:`READERS` threads
    under a progress bar (shown once the reading takes a while); the
    reading stops when the caller stops at a bad pair."""
    pool = ThreadPoolExecutor(READERS)
    bar = tqdm(total=len(pairs), desc=f'checking {loader}', unit='pair',
               delay=PROGRESS_DELAY, leave=False, dynamic_ncols=True)
    try:
        for facts in pool.map(lambda pair: read_pair(*pair), pairs):
            bar.update(1)
            yield facts
    finally:
        bar.close()
        pool.shutdown(cancel_futures=True)


def check_datasets(cfg, loaders: Iterable[str]) -> None:
    """Every data set of the dataloaders ``loaders`` of ``cfg`` (before
    train, test or prune starts; see the module docstring)."""
    num_classes = model_num_classes(cfg)
    for loader in loaders:
        dataset = (cfg.get(loader) or {}).get('dataset')
        for leaf in leaf_datasets(dataset):
            check_dataset(leaf, loader, num_classes)
