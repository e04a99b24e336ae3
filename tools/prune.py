"""Score the tokens of a trained Segmenter and compress it (Prune and Merge).

Loads a dense checkpoint (e.g. one of mmseg's released Segmenter
checkpoints) into the Prune-and-Merge model of CONFIG, scores every patch
token with the config's own training data (gradient-weighted attention,
DESIGN.md §2.1), builds one structure per compressed unit (§2.2), installs
it and writes a checkpoint that ``tools/test.py CONFIG OUT`` evaluates as is
and ``tools/train.py`` fine-tunes (``--cfg-options load_from=OUT``).

Example::

    python tools/prune.py \\
        configs/segmenter/pm-segmenter_vit-s_mask_8xb1-160k_ade20k-512x512.py \\
        segmenter_vit-s_mask_8x1_512x512_160k_ade20k_20220105_151706-511bb103.pth \\
        --out work_dirs/pm_vit-s/pruned.pth --iters 100
    # the same 100 batches shared by 8 processes (GPUs, or CPUs with gloo)
    torchrun --nproc-per-node 8 tools/prune.py CONFIG CHECKPOINT \\
        --out work_dirs/pm_vit-s/pruned.pth --iters 100 --launcher pytorch

See ``--help`` for how ``--mode`` relates to the config's compression mode.
"""
from mmseg_pm.cli.prune import main

if __name__ == '__main__':
    main()
