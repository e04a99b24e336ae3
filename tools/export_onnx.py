"""Export a (compressed) segmentor to ONNX at a fixed input size.

The graph is the segmentor's ``mode='tensor'`` forward: normalised
(B, 3, H, W) images in (the config's data preprocessor: mean/std and
BGR->RGB are *not* included), decoder logits out. ``--check`` runs the file
with onnxruntime on CPU and prints the largest difference to PyTorch.

Example::

    python tools/export_onnx.py \\
        configs/synthetic/pm-segmenter_vit-tiny_mask_synthetic-ade-64x64.py \\
        work_dirs/pm_tiny/pruned.pth --out work_dirs/pm_tiny/model.onnx --check

Prune and Merge exports (its structure is a constant of the graph). MSTM
and ToMe choose their merges per image with sorting and scattering; see
docs/weights_export_visualize.md for what that means for their export.
"""
from mmseg_pm.cli.export_onnx import main

if __name__ == '__main__':
    main()
