"""Benchmark dense and compressed Segmenters and their peers side by side.

Examples::

    # ViT-S Segmenter 512x512 on 2 CPU threads: mmseg's dense model, ours
    # with compression off, PM (residual and authors' pinv) at keep 0.7 /
    # 0.5, ToMe and MSTM at the same GFLOPs; PyTorch, onnxruntime and
    # torch.compile rows interleaved; operator profiles; input-size study
    python tools/benchmark.py \
        configs/segmenter/pm-segmenter_vit-s_mask_8xb1-160k_ade20k-512x512.py \
        --keep-rates 0.7 0.5 --threads 2 --profile --resolutions 512 640 1024

    # GPU: fp32 / bf16 / fp16, batch 1, 8 and 32 (onnxruntime rows: CPU only)
    python tools/benchmark.py \
        configs/segmenter/pm-segmenter_vit-s_mask_8xb1-160k_ade20k-512x512.py \
        --keep-rates 0.7 0.5 --device cuda --dtypes fp32 bf16 fp16 \
        --batch-sizes 1 8 32 --repeats 20 --profile

Writes benchmarks/<name>.json, .md and .png (see docs/benchmark.md).
"""
import os
import sys
from pathlib import Path

# The CPU memory measurement uses torch's profiler; keep its log quiet.
os.environ.setdefault('KINETO_LOG_LEVEL', '5')

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmseg_pm.benchmark import main  # noqa: E402
from mmseg_pm.cli import run_tool  # noqa: E402

if __name__ == '__main__':
    run_tool(main)
