"""Benchmark dense and compressed Segmenters side by side.

Examples::

    # ViT-S Segmenter 512x512 on 2 CPU threads: mmseg's dense model, ours
    # with compression off, sparse and dense-matrix merge at keep 0.7 / 0.5
    python tools/benchmark.py \
        configs/segmenter/pm-segmenter_vit-s_mask_8xb1-160k_ade20k-512x512.py \
        --keep-rates 0.7 0.5 --threads 2 --resolutions 512 640 1024

    # a trained checkpoint, GPU, fp32 and bf16
    python tools/benchmark.py CONFIG.py:work_dirs/run/iter_160000.pth \
        --device cuda --dtypes fp32 bf16 --batch-sizes 1 32

Writes benchmarks/<name>.json, .md and .png (see docs/benchmark.md).
"""
import os
import sys
from pathlib import Path

# The CPU memory measurement uses torch's profiler; keep its log quiet.
os.environ.setdefault('KINETO_LOG_LEVEL', '5')

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmseg_pm.benchmark import main  # noqa: E402

if __name__ == '__main__':
    main()
