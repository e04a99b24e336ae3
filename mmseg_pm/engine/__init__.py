"""What mmengine's Runner writes, under the project's output rule.

mmengine writes checkpoints, ``last_checkpoint``, the test metrics JSON and
(through mmseg's IoUMetric) prediction PNGs straight into their final
paths, and the test metrics from every rank into the same file. The
replacements here write each file to a temporary sibling renamed when
complete (:func:`mmseg_pm.utils.outputs.atomic_output`), and the metrics
from rank 0 only:

* ``AtomicCheckpointHook``: ``CheckpointHook`` writing through the
  ``atomic_local`` file backend, ``last_checkpoint`` too;
* ``RankZeroLoggerHook``: ``LoggerHook`` whose test metrics JSON is written
  by rank 0 alone;
* ``AtomicIoUMetric``: ``IoUMetric`` writing predictions atomically.

The project's configs name them; :func:`use_project_writers` puts them in
place of mmengine's and mmseg's in any config the tools load.
"""
from .hooks import (AtomicCheckpointHook, AtomicLocalBackend,
                    RankZeroLoggerHook)
from .metrics import AtomicIoUMetric

# mmengine / mmseg type -> the project's replacement
PROJECT_WRITERS = {
    'CheckpointHook': 'AtomicCheckpointHook',
    'LoggerHook': 'RankZeroLoggerHook',
    'IoUMetric': 'AtomicIoUMetric',
}


def _replace_type(node: dict) -> None:
    kind = node.get('type')
    if not isinstance(kind, str):
        return
    scope, _, name = kind.rpartition('.')
    if name in PROJECT_WRITERS and scope in ('', 'mmengine', 'mmseg'):
        node['type'] = PROJECT_WRITERS[name]


def use_project_writers(cfg) -> None:
    """Swap mmengine's CheckpointHook and LoggerHook and mmseg's IoUMetric
    in ``cfg`` (default hooks, custom hooks, evaluators) for the project's
    subclasses, which take the same arguments. Subclasses of the user's
    own are left alone."""
    hooks = list((cfg.get('default_hooks') or {}).values()) + \
        list(cfg.get('custom_hooks') or [])
    for name in ('val_evaluator', 'test_evaluator'):
        evaluator = cfg.get(name)
        if isinstance(evaluator, dict) and 'metrics' in evaluator:
            evaluator = evaluator['metrics']
        hooks += evaluator if isinstance(evaluator, (list, tuple)) \
            else [evaluator]
    for node in hooks:
        if isinstance(node, dict):
            _replace_type(node)


__all__ = ['AtomicCheckpointHook', 'AtomicIoUMetric', 'AtomicLocalBackend',
           'PROJECT_WRITERS', 'RankZeroLoggerHook', 'use_project_writers']
