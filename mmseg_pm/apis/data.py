"""The data a run is given, checked before any work starts.

mmseg finds a bad sample only when it loads it: a label outside the
classes is scored as nothing (``mIoU: 0.0``, exit 0) by tools/test.py and
stops training and scoring with ``IndexError``; an annotation of another
size is found at the first validation, after training iterations and a
saved checkpoint; a damaged image ends in an ``AssertionError``; an empty
annotation folder in a ``FileNotFoundError``. :func:`check_datasets` reads
each data set's index the way mmseg does and checks, for every pair, that
its annotation exists, and for a bounded, evenly spread sample of pairs
(:data:`SAMPLE_SIZE`; all of them in small data sets) that image and
annotation decode, have the same size and hold only labels below the
number of classes or the ignore index, after the data set's own label
mapping (``reduce_zero_label``, then ``label_map``). The first bad file is
named with the fix.
"""
from pathlib import Path
from typing import Iterable, List, Optional

import numpy as np

from .errors import UsageError

# pairs decoded per data set: every pair of a small data set, an evenly
# spread sample of a large one (every pair is still checked to exist).
# Measured: 200 pairs of 512x683, 32 decoded, 0.9-1.1 s on 2 busy cores.
SAMPLE_SIZE = 32


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


def sample_indices(size: int, limit: int = SAMPLE_SIZE) -> List[int]:
    """At most ``limit`` indices spread evenly over ``range(size)``, first
    and last included."""
    if size <= limit:
        return list(range(size))
    return sorted({round(i * (size - 1) / (limit - 1))
                   for i in range(limit)})


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


def check_pair(image: str, annotation: Optional[str], loader: str,
               num_classes: int, ignore_index: int, reduce_zero_label: bool,
               label_map: Optional[dict]) -> None:
    """One image (and its annotation) decodes, the two sizes agree, and
    every label is a class index or the ignore index."""
    pixels = _decode(image, 'color', 'cv2')
    if pixels is None:
        raise DataError(f'{loader}: the image {image} cannot be decoded '
                        '(damaged, empty or not an image); replace or '
                        'remove it')
    if annotation is None:
        return
    raw = _decode(annotation, 'unchanged', 'pillow')
    if raw is None:
        raise DataError(f'{loader}: the annotation {annotation} cannot be '
                        'decoded (damaged, empty or not an image); replace '
                        'or remove it and its image')
    raw = np.squeeze(raw)
    if raw.ndim != 2:
        raise DataError(f'{loader}: the annotation {annotation} has '
                        f'{raw.shape[-1]} channels; a label map is one '
                        'channel of class indices (an 8-bit grey or '
                        'palette PNG)')
    if raw.shape != pixels.shape[:2]:
        raise DataError(f'{loader}: the annotation {annotation} is '
                        f'{raw.shape[0]}x{raw.shape[1]} but its image '
                        f'{image} is {pixels.shape[0]}x{pixels.shape[1]}; '
                        'an annotation labels its image pixel for pixel, '
                        'so make them the same size')
    labels = mmseg_labels(raw, reduce_zero_label, label_map)
    values = np.unique(labels)
    bad = values[(values >= num_classes) & (values != ignore_index)]
    if bad.size:
        first = int(bad[0])
        stored = int(raw[labels == first].flat[0])
        how = (f' (the data set has reduce_zero_label=True: stored values '
               f'1..{num_classes} are the classes, 0 and {ignore_index} '
               'are ignored)' if reduce_zero_label else
               f' (classes 0..{num_classes - 1}, {ignore_index} = ignored)')
        raise DataError(
            f'{loader}: the annotation {annotation} holds the label '
            f'{stored}, class index {first}, but there are {num_classes} '
            f'classes{how}; fix the annotation, or the config\'s '
            'num_classes and classes')


def check_dataset(dataset_cfg: dict, loader: str,
                  num_classes: Optional[int] = None,
                  sample_size: int = SAMPLE_SIZE) -> int:
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
    for index in sample_indices(len(items), sample_size):
        item = items[index]
        check_pair(item['img_path'],
                   item['seg_map_path'] if with_labels else None, loader,
                   num_classes, dataset.ignore_index,
                   item.get('reduce_zero_label', dataset.reduce_zero_label),
                   item.get('label_map', dataset.label_map))
    return len(items)


def check_datasets(cfg, loaders: Iterable[str]) -> None:
    """Every data set of the dataloaders ``loaders`` of ``cfg`` (before
    train, test or prune starts; see the module docstring)."""
    num_classes = model_num_classes(cfg)
    for loader in loaders:
        dataset = (cfg.get(loader) or {}).get('dataset')
        for leaf in leaf_datasets(dataset):
            check_dataset(leaf, loader, num_classes)
