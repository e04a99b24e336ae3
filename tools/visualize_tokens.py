"""Draw what a compressed Segmenter merged and pruned, over an image.

One panel per chosen block: merge windows (one colour each, outlined),
centres (dots), tokens kept alone, pruned tokens (grey, hatched). Under
them, the block's token scores as a heat map. Prune and Merge structures
are the same for every image; MSTM and ToMe merge per image, so the image
is run through the model and its source maps are drawn.

The image is resized to the backbone's img_size (the grid the structures
are built for). Token scores come from ``--scores`` (a tensor (L, N), a
dict with ``scores``, or a checkpoint from tools/prune.py), else from the
checkpoint's ``meta['prune_and_merge']['scores']`` (tools/prune.py writes
them), else they are computed on ``--score-iters`` batches of the config's
training data, else left out with a note.

Example::

    python tools/visualize_tokens.py \\
        configs/synthetic/pm-segmenter_vit-tiny_mask_synthetic-ade-64x64.py \\
        work_dirs/pm_tiny/pruned.pth \\
        data/synthetic_ade/images/validation/ADE_val_00000002.jpg \\
        --out tokens.png --layers 1 2 3
"""
from mmseg_pm.cli.visualize_tokens import main

if __name__ == '__main__':
    main()
