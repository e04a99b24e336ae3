"""mmseg's IoUMetric with prediction files written atomically."""
from pathlib import Path

import numpy as np
from mmseg.evaluation import IoUMetric
from mmseg.registry import METRICS
from PIL import Image

from mmseg_pm.utils.outputs import atomic_output


def save_prediction(label_map: np.ndarray, path) -> None:
    """A label map as an 8-bit PNG, through a temporary sibling: a full
    disk or an interrupt leaves no empty or cut-off PNG."""
    with atomic_output(path) as tmp:
        Image.fromarray(label_map.astype(np.uint8)).save(tmp, format='PNG')


@METRICS.register_module()
class AtomicIoUMetric(IoUMetric):
    """``IoUMetric`` (same arguments and metrics); with ``output_dir`` each
    prediction is written as IoUMetric names and encodes it (the image's
    name, ``.png``, labels + 1 for ``reduce_zero_label`` data sets), but
    atomically. Each rank writes the predictions of its own images."""

    def process(self, data_batch: dict, data_samples) -> None:
        output_dir, self.output_dir = self.output_dir, None
        try:
            super().process(data_batch, data_samples)
        finally:
            self.output_dir = output_dir
        if output_dir is None:
            return
        for sample in data_samples:
            label_map = sample['pred_sem_seg']['data'].squeeze().cpu().numpy()
            if sample.get('reduce_zero_label', False):
                label_map = label_map + 1
            name = Path(sample['img_path']).stem + '.png'
            save_prediction(label_map, Path(output_dir).absolute() / name)
