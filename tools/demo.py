"""The whole Prune-and-Merge pipeline on the built-in synthetic data, on CPU.

One command: make the synthetic ADE20K-format data set, train a tiny dense
Segmenter, score its tokens, prune and merge, fine-tune with distillation
from the dense model, evaluate dense and compressed models with mmseg's
IoUMetric, and print one table (mIoU, GFLOPs, images/s, tokens per block).
The residual reconstruction (the default) is shown next to the authors'
pinv at the same structure (docs/residual.md). It runs the project's own
tools (train.py, prune.py, test.py) in-process.

Example::

    python tools/demo.py                      # a few minutes on 2 CPU cores
    python tools/demo.py --keep-rate 0.5 --layers 1 2 3 --work-dir work_dirs/demo_05

Outputs (under --work-dir, default work_dirs/demo): dense/ and distill/
(training work dirs and checkpoints), pruned.pth (and pruned_pinv.pth),
the configs they were made with, prune.log,
merge_windows.png (the structures drawn on a validation image),
results.json and results.md (the table).
"""
from mmseg_pm.cli.demo import main

if __name__ == '__main__':
    main()
