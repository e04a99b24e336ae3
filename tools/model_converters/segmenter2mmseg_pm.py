"""Convert a checkpoint of the original Segmenter code (rstrudel/segmenter)
-- optionally with the Prune-and-Merge authors' per-block merge/reconstruct
matrices -- to mmseg / mmseg_pm names.

``encoder.*`` -> ``backbone.*`` (``PMVisionTransformer``), ``decoder.*`` ->
``decode_head.*`` (mmseg's ``SegmenterMaskTransformerHead``), and the
matrices (names: ``mmseg_pm.converters.PM_MATRIX_KEYS``) -> the backbone's
``token_compressors``. The printed ``compression=`` goes into the config;
the checkpoint then loads with ``load_from`` / ``tools/test.py``.

Example::

    python tools/model_converters/segmenter2mmseg_pm.py \\
        seg_small_mask/checkpoint.pth work_dirs/seg_small_mask_mmseg.pth

Segmenter's LayerNorms use eps 1e-5 (not the 1e-6 of mmseg's Segmenter
configs) and its patch embedding has a bias: the backbone config needs
``norm_cfg=dict(type='LN', eps=1e-5)`` and ``patch_bias=True``.
"""
from mmseg_pm.cli.segmenter2mmseg_pm import main

if __name__ == '__main__':
    main()
