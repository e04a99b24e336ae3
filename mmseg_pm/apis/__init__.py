"""What a user calls from Python (mmseg's ``apis`` style), and the one
import path of each of these names:

* build and load: :func:`init_segmentor` (a config and a checkpoint, like
  mmseg's ``init_model``), :func:`build_segmentor` (a config only), and the
  FLOPs of one crop, :func:`crop_flops`;
* score and prune: :func:`token_scores`, :func:`token_scores_from_config`;
  :func:`prune_config`, :func:`prune_segmentor`, :func:`save_pruned`;
* train and test on mmengine's Runner: :func:`train_config` and
  :func:`train`, :func:`evaluation_config` and :func:`evaluate`;
* a multi-process run from Python: :func:`init_distributed`,
  :func:`end_distributed`.

Import these from ``mmseg_pm.apis`` only; the modules that define them
(``inference``, ``scoring``, ``prune``, ``runner``, ``distributed``) are
the implementation, and their other names are imported from those modules
by the code that needs them. Everything else has one path too: the module
that defines it. Bad input raises
:class:`mmseg_pm.utils.errors.UsageError` (or a subclass) whose message
names the problem and the fix; the output rule and checkpoint files are
:mod:`mmseg_pm.utils.outputs` and :mod:`mmseg_pm.utils.checkpoint`, loading
a checkpoint into a model :mod:`mmseg_pm.models.checkpoint`."""
from .distributed import end_distributed, init_distributed
from .inference import build_segmentor, crop_flops, init_segmentor
from .prune import prune_config, prune_segmentor, save_pruned
from .runner import evaluate, evaluation_config, train, train_config
from .scoring import token_scores, token_scores_from_config

__all__ = [
    'build_segmentor', 'init_segmentor', 'crop_flops',
    'token_scores', 'token_scores_from_config',
    'prune_config', 'prune_segmentor', 'save_pruned',
    'train_config', 'train', 'evaluation_config', 'evaluate',
    'init_distributed', 'end_distributed',
]
