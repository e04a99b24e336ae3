"""A small synthetic data set in ADE20K's on-disk format.

Real ADE20K is far too large for CPU smoke tests, yet the training pipeline
should run unchanged on it.  This module draws scenes whose labels need
spatial detail (large regions, blobs, few-pixel objects, 1-3 px lines and
sharp boundaries) and writes them in mmseg's ADE layout so that
``mmseg.datasets.ADE20KDataset`` loads them as is.
"""
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from mmseg_pm.utils.outputs import umask_mode

__all__ = [
    'SYNTHETIC_CLASSES', 'CLASS_IDS', 'CLASS_NAMES', 'TRAIN_LABELS',
    'IGNORE_ID', 'MANIFEST_NAME', 'make_sample', 'make_synthetic_ade'
]

# (ADE id, ADE name); names equal ADE20KDataset.METAINFO['classes'][id - 1].
SYNTHETIC_CLASSES = (
    (1, 'wall'),
    (3, 'sky'),
    (4, 'floor'),
    (23, 'painting'),
    (40, 'cushion'),
    (94, 'pole'),
    (120, 'ball'),
    (149, 'clock'),
)
CLASS_IDS = tuple(cid for cid, _ in SYNTHETIC_CLASSES)
CLASS_NAMES = tuple(name for _, name in SYNTHETIC_CLASSES)
# Labels seen by a model after mmseg's reduce_zero_label (id 0 -> 255).
TRAIN_LABELS = tuple(cid - 1 for cid in CLASS_IDS)
IGNORE_ID = 0

WALL, SKY, FLOOR, PAINTING, CUSHION, POLE, BALL, CLOCK = CLASS_IDS

MANIFEST_NAME = 'synthetic_ade.json'
GENERATOR = 'mmseg_pm.synthetic_ade'  # the manifest's marker of this module
GENERATOR_VERSION = 1
JPEG_QUALITY = 95
AUTO_PROGRESS_MIN_IMAGES = 200

# Appearance per label: base RGB colour, texture kind, noise sigma.
_APPEARANCE = {
    WALL: ((200, 188, 160), 'plain', 5.0),
    SKY: ((110, 170, 235), 'vgradient', 3.0),
    FLOOR: ((135, 88, 50), 'hstripes', 6.0),
    PAINTING: ((40, 115, 70), 'checker', 6.0),
    CUSHION: ((175, 60, 165), 'diagonal', 6.0),
    POLE: ((45, 45, 55), 'plain', 4.0),
    BALL: ((230, 40, 30), 'plain', 4.0),
    CLOCK: ((245, 235, 80), 'plain', 4.0),
    IGNORE_ID: ((20, 20, 20), 'plain', 40.0),
}

_SPLITS = (('training', 'train'), ('validation', 'val'))
# (label, [min, max) count, [min, max) radius) of the few-pixel discs.
_SMALL_OBJECTS = ((BALL, (2, 7), (1, 4)), (CLOCK, (1, 4), (2, 5)))


# ---------------------------------------------------------------- labels
def _tilted_line(width: int, y_mid: float, slope: float) -> np.ndarray:
    """Row coordinate of a slanted boundary per column (non-axis edges)."""
    xs = np.arange(width, dtype=np.float64)
    return y_mid + slope * (xs - width / 2)


def _draw_background(label: np.ndarray, rng: np.random.Generator) -> None:
    """Large regions: optional sky on top, wall in the middle, floor below."""
    h, w = label.shape
    rows = np.arange(h)[:, None]
    label[:] = WALL
    if rng.random() < 0.8:
        sky = _tilted_line(w, rng.uniform(0.15, 0.35) * h,
                           rng.uniform(-0.15, 0.15))
        label[rows < sky[None, :]] = SKY
    floor = _tilted_line(w, rng.uniform(0.6, 0.8) * h, rng.uniform(-0.2, 0.2))
    label[rows >= floor[None, :]] = FLOOR


def _draw_paintings(label: np.ndarray, rng: np.random.Generator) -> None:
    """Medium rectangles framed by a 1 px unlabelled (id 0) border."""
    h, w = label.shape
    for _ in range(rng.integers(0, 3)):
        ph = int(rng.uniform(0.12, 0.3) * h)
        pw = int(rng.uniform(0.15, 0.35) * w)
        y0 = int(rng.uniform(0.1, 0.6) * h)
        x0 = int(rng.integers(0, max(1, w - pw)))
        cv2.rectangle(label, (x0, y0), (x0 + pw, y0 + ph), PAINTING, -1)
        cv2.rectangle(label, (x0, y0), (x0 + pw, y0 + ph), IGNORE_ID, 1)


def _draw_cushions(label: np.ndarray, rng: np.random.Generator) -> None:
    """Medium rotated ellipses, mostly in the lower half."""
    h, w = label.shape
    s = min(h, w)
    for _ in range(rng.integers(1, 4)):
        centre = (int(rng.uniform(0.1, 0.9) * w),
                  int(rng.uniform(0.45, 0.95) * h))
        axes = (max(2, int(rng.uniform(0.06, 0.15) * s)),
                max(2, int(rng.uniform(0.04, 0.1) * s)))
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(label, centre, axes, angle, 0, 360, CUSHION, -1)


def _thin_line(label: np.ndarray, p0: Tuple[float, float],
               p1: Tuple[float, float], width: int, vertical: bool) -> None:
    """Exactly ``width`` px wide line: parallel 1 px lines side by side.

    cv2's ``thickness`` gives 2t-1 px, so thin widths are built instead.
    """
    for k in range(width):
        dx, dy = (k, 0) if vertical else (0, k)
        cv2.line(label, (int(round(p0[0])) + dx, int(round(p0[1])) + dy),
                 (int(round(p1[0])) + dx, int(round(p1[1])) + dy), POLE, 1,
                 cv2.LINE_8)


def _draw_poles(label: np.ndarray, rng: np.random.Generator) -> None:
    """Thin structures: 1-3 px lines, mostly near-vertical."""
    h, w = label.shape
    for _ in range(rng.integers(1, 4)):
        width = int(rng.integers(1, 4))
        vertical = bool(rng.random() < 0.75)
        if vertical:
            x = rng.uniform(0.05, 0.9) * w
            p0 = (x, rng.uniform(0.0, 0.4) * h)
            p1 = (x + rng.uniform(-0.1, 0.1) * w, rng.uniform(0.7, 1.0) * h)
        else:
            y = rng.uniform(0.2, 0.8) * h
            p0 = (rng.uniform(0.0, 0.3) * w, y)
            p1 = (rng.uniform(0.7, 1.0) * w, y + rng.uniform(-0.1, 0.1) * h)
        _thin_line(label, p0, p1, width, vertical)


def _draw_small_objects(label: np.ndarray, rng: np.random.Generator) -> None:
    """Few-pixel discs: balls (radius 1-3) and clocks (radius 2-4)."""
    h, w = label.shape
    for cid, count, radii in _SMALL_OBJECTS:
        for _ in range(rng.integers(*count)):
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.circle(label, centre, int(rng.integers(*radii)), cid, -1)


def _draw_ignore_patch(label: np.ndarray, rng: np.random.Generator) -> None:
    """A tiny unlabelled patch so every image has some ignore pixels."""
    h, w = label.shape
    ph, pw = rng.integers(2, 5, size=2)
    y0 = int(rng.integers(0, h - ph + 1))
    x0 = int(rng.integers(0, w - pw + 1))
    label[y0:y0 + ph, x0:x0 + pw] = IGNORE_ID


def make_label_map(size: Tuple[int, int],
                   rng: np.random.Generator) -> np.ndarray:
    """Draw one ADE-convention label map (uint8, 0 = ignore)."""
    label = np.empty(size, dtype=np.uint8)
    for draw in (_draw_background, _draw_paintings, _draw_cushions,
                 _draw_poles, _draw_small_objects, _draw_ignore_patch):
        draw(label, rng)
    return label


# ---------------------------------------------------------------- images
def _pattern(kind: str, size: Tuple[int, int],
             rng: np.random.Generator) -> np.ndarray:
    """Zero-mean intensity pattern (HxW) that makes a class recognisable."""
    h, w = size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    if kind == 'plain':
        return np.zeros(size, np.float32)
    if kind == 'vgradient':
        return 40.0 * (ys / max(1, h - 1) - 0.5)
    if kind == 'hstripes':
        return 22.0 * np.sin(2 * np.pi * ys / 5.0 + phase)
    if kind == 'checker':
        cell = (np.floor(ys / 4) + np.floor(xs / 4)) % 2
        return 45.0 * (cell - 0.5)
    if kind == 'diagonal':
        return 30.0 * np.sin(2 * np.pi * (xs + ys) / 6.0 + phase)
    raise ValueError(f'unknown texture kind {kind!r}')


def _class_texture(cid: int, size: Tuple[int, int],
                   rng: np.random.Generator) -> np.ndarray:
    """Full-frame HxWx3 float texture for one label with colour jitter."""
    colour, kind, sigma = _APPEARANCE[cid]
    if cid == IGNORE_ID:
        colour = rng.integers(0, 256, size=3)
    base = np.asarray(colour, np.float32) + rng.uniform(-12, 12, size=3)
    pattern = _pattern(kind, size, rng)[..., None]
    noise = rng.normal(0.0, sigma, size=(*size, 3)).astype(np.float32)
    return base + pattern + noise


def render_image(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Paint an RGB uint8 image whose pixels follow ``label`` exactly."""
    size = label.shape
    image = np.zeros((*size, 3), np.float32)
    for cid in np.unique(label):
        mask = label == cid
        image[mask] = _class_texture(int(cid), size, rng)[mask]
    image *= rng.uniform(0.8, 1.2)  # per-image brightness
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def make_sample(size: Tuple[int, int],
                rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """One (RGB image, ADE label map) pair."""
    label = make_label_map(size, rng)
    return render_image(label, rng), label


# ---------------------------------------------------------------- disk
def _sample_rng(seed: int, split_index: int,
                index: int) -> np.random.Generator:
    """Per-sample generator, so a sample does not depend on split sizes."""
    return np.random.default_rng([seed, split_index, index])


def _write_sample(img_path: Path, ann_path: Path, image: np.ndarray,
                  label: np.ndarray) -> None:
    """Save as JPEG (q95) + single-channel PNG, the formats ADE uses."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(img_path), bgr,
                       [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise OSError(f'failed to write {img_path}')
    if not cv2.imwrite(str(ann_path), label):
        raise OSError(f'failed to write {ann_path}')


def _split_dirs(root: Path, split: str) -> Tuple[Path, Path]:
    return root / 'images' / split, root / 'annotations' / split


def _generate(root: Path, counts: Dict[str, int], size: Tuple[int, int],
              seed: int, progress: bool) -> None:
    """Write every split of the data set under ``root``."""
    total = sum(counts.values())
    with tqdm(total=total, disable=not progress,
              desc='synthetic ADE') as bar:
        for split_index, (split, tag) in enumerate(_SPLITS):
            img_dir, ann_dir = _split_dirs(root, split)
            img_dir.mkdir(parents=True)
            ann_dir.mkdir(parents=True)
            for i in range(counts[split]):
                rng = _sample_rng(seed, split_index, i)
                stem = f'ADE_{tag}_{i + 1:08d}'
                _write_sample(img_dir / f'{stem}.jpg',
                              ann_dir / f'{stem}.png',
                              *make_sample(size, rng))
                bar.update(1)


def _params(num_train: int, num_val: int, size: Tuple[int, int],
            seed: int) -> dict:
    """Everything that determines the generated bytes (the manifest)."""
    return dict(
        generator=GENERATOR,
        version=GENERATOR_VERSION,
        num_train=num_train,
        num_val=num_val,
        size=list(size),
        seed=seed,
        class_ids=list(CLASS_IDS))


def _read_manifest(root: Path) -> Optional[dict]:
    try:
        return json.loads((root / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def _count(directory: Path, suffix: str) -> int:
    if not directory.is_dir():
        return 0
    return sum(1 for p in directory.iterdir() if p.suffix == suffix)


def _is_complete(root: Path, params: dict) -> bool:
    """True if ``root`` already holds exactly this data set."""
    if _read_manifest(root) != params:
        return False
    counts = dict(training=params['num_train'],
                  validation=params['num_val'])
    for split, n in counts.items():
        img_dir, ann_dir = _split_dirs(root, split)
        if _count(img_dir, '.jpg') != n or _count(ann_dir, '.png') != n:
            return False
    return True


def _is_empty(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def _layout(root: Path) -> dict:
    """Folder -> the names this module writes in it (a set, or a pattern
    of the images' or annotations' names)."""
    layout = {root: {MANIFEST_NAME, 'images', 'annotations'}}
    for split, tag in _SPLITS:
        for folder, suffix in zip(_split_dirs(root, split), ('.jpg', '.png')):
            layout.setdefault(folder.parent, set()).add(split)
            layout[folder] = re.compile(rf'ADE_{tag}_\d{{8}}\{suffix}')
    return layout


def _written_here(layout: dict, entry: Path, is_dir: bool) -> bool:
    """Whether ``entry`` is one this module writes (a folder of the layout,
    or a file named as its folder's files are; never a link)."""
    allowed = layout.get(entry.parent, set())
    named = allowed.fullmatch(entry.name) if isinstance(allowed, re.Pattern) \
        else entry.name in allowed
    return bool(named) and not entry.is_symlink() and \
        is_dir == (entry in layout)


def _foreign_entry(root: Path) -> Optional[Path]:
    """The first entry under ``root`` this module did not write (None if
    every one is part of a data set of its layout): the manifest, the
    split folders and their ``ADE_*`` images and annotations, nothing else
    (no link, no other file, no hidden folder such as .git)."""
    layout = _layout(root)
    for folder, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            entry = Path(folder) / name
            if not _written_here(layout, entry, name in dirs):
                return entry
    return None


def _remove_written(root: Path) -> None:
    """Delete a data set entry by entry: the files of its layout and the
    folders that leaves empty. Whatever else appeared since it was checked
    stays (with the folders that hold it)."""
    layout = _layout(root)
    for folder, dirs, files in os.walk(root, topdown=False):
        for name in files:
            if _written_here(layout, Path(folder) / name, False):
                os.unlink(Path(folder) / name)
        try:
            os.rmdir(folder)
        except OSError:  # not empty: not ours to remove
            pass


def _check_ours(root: Path) -> None:
    """Refuse to replace ``root`` unless this module wrote it: its manifest
    (the marker) names this generator and nothing else lives there."""
    manifest = _read_manifest(root)
    if not isinstance(manifest, dict) or \
            manifest.get('generator') != GENERATOR:
        raise FileExistsError(
            f'{root} is not a data set written by make_synthetic_ade (no '
            f'{MANIFEST_NAME} of it), so --overwrite does not delete it; '
            'choose a new or empty ROOT')
    foreign = _foreign_entry(root)
    if foreign is not None:
        raise FileExistsError(
            f'{root} is a synthetic data set but also holds {foreign}, which'
            ' make_synthetic_ade did not write, so --overwrite does not '
            'delete it; move that out or choose a new or empty ROOT')


def _replace(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; the old ``dst`` (a data set this module
    wrote) is dropped only afterwards, file by file."""
    if not dst.exists() and not dst.is_symlink():
        os.rename(src, dst)
        return
    trash = Path(tempfile.mkdtemp(prefix=f'.{dst.name}.old-', dir=dst.parent))
    os.rename(dst, trash / dst.name)
    os.rename(src, dst)
    _remove_written(trash / dst.name)
    try:
        trash.rmdir()
    except OSError:  # something appeared in the old data set: kept there
        pass


def _check_args(num_train: int, num_val: int, size: Sequence[int],
                seed: int) -> Tuple[int, int]:
    if num_train < 0 or num_val < 0:
        raise ValueError('num_train and num_val must be >= 0, got '
                         f'{num_train} and {num_val}')
    if len(size) != 2 or min(size) < 16:
        raise ValueError(f'size must be (height, width) >= 16, got {size}')
    if seed < 0:
        raise ValueError(f'seed must be >= 0, got {seed}')
    return int(size[0]), int(size[1])


def _result(root: Path, params: dict, reused: bool) -> dict:
    result = dict(params, root=str(root), reused=reused,
                  class_names=list(CLASS_NAMES))
    for split in ('training', 'validation'):
        img_dir, ann_dir = _split_dirs(root, split)
        result[f'{split}_img_dir'] = str(img_dir)
        result[f'{split}_ann_dir'] = str(ann_dir)
    return result


def make_synthetic_ade(root,
                       num_train: int = 64,
                       num_val: int = 16,
                       size: Sequence[int] = (128, 128),
                       seed: int = 0,
                       overwrite: bool = False,
                       progress: Optional[bool] = None) -> dict:
    """Create (or reuse) a synthetic ADE20K-layout data set at ``root``.

    Layout: ``images/{training,validation}/ADE_*.jpg`` and
    ``annotations/{training,validation}/ADE_*.png`` plus a
    ``synthetic_ade.json`` manifest.  ``size`` is (height, width).  An
    existing data set with the same manifest is returned as is (generation
    is deterministic, so regenerating would give the same bytes); another
    data set this module wrote is replaced only when ``overwrite`` is True,
    and nothing else ever is: a folder holding anything but such a data set
    (its manifest names this generator) is refused, overwrite or not.  Files
    are written to a temporary sibling directory and renamed into place, so
    ``root`` never holds a half-written data set.

    Returns:
        dict: the manifest parameters plus ``root``, ``reused``,
        ``class_names`` and ``{split}_img_dir`` / ``{split}_ann_dir``.
    """
    size = _check_args(num_train, num_val, size, seed)
    root = Path(root).expanduser().resolve()
    params = _params(num_train, num_val, size, seed)
    if _is_complete(root, params):
        return _result(root, params, reused=True)
    if not _is_empty(root):
        if not overwrite:
            raise FileExistsError(
                f'{root} exists and is not the requested synthetic ADE data '
                'set; pass overwrite=True (CLI: --overwrite) to replace it')
        _check_ours(root)

    if progress is None:
        progress = num_train + num_val >= AUTO_PROGRESS_MIN_IMAGES
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{root.name}.tmp-', dir=root.parent))
    tmp.chmod(umask_mode(directory=True))  # mkdtemp makes it private
    try:
        _generate(tmp, dict(training=num_train, validation=num_val), size,
                  seed, progress)
        (tmp / MANIFEST_NAME).write_text(json.dumps(params, indent=2) + '\n')
        _replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return _result(root, params, reused=False)
