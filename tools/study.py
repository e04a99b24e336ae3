"""Quality study at matched FLOPs: every token-compression method on one
trained dense Segmenter, calibrated to the same GFLOPs, evaluated before and
after the same distillation fine-tune.

On the built-in synthetic ADE20K-format data (a small proxy, not ADE20K):

1. make the data, train ONE dense Segmenter (mmseg's VisionTransformer);
2. score its tokens once (gradient-weighted attention, DESIGN.md §2.1);
3. for each budget (fraction of the dense encoder+decoder GFLOPs, counted
   with ``count_flops``) and each method -- Prune and Merge per layer with
   the 'row' and the 'nearest' rule, Prune and Merge span mode, MSTM, ToMe
   and random centres (the floor) -- search the method's knob until its
   GFLOPs are within ``--tolerance`` of the target, evaluate it (mmseg's
   IoUMetric via tools/test.py), fine-tune it with distillation from the
   dense model (same iterations, seed and data for every method) and
   evaluate again;
4. measure images/s of all models side by side at batch 1;
5. write table.md, results.json and miou_vs_gflops.png to ``--out-dir``.

Example::

    python tools/study.py                          # ~21 min on 2 shared cores
    python tools/study.py --budgets 0.7 --methods pm-row tome --dense-iters 100

Stages are cached under ``--work-dir`` by their settings: running again with
the same settings reuses the dense model and finished variants (``--fresh``
recomputes everything).
"""
from mmseg_pm.cli.study import main

if __name__ == '__main__':
    main()
