"""What tools and users call from Python (mmseg's ``apis`` style): a
segmentor from a config and a checkpoint and its FLOPs per crop
(:mod:`.inference`), training and evaluation on mmengine's Runner
(:mod:`.runner`), scoring and pruning (:mod:`.scoring`, :mod:`.prune`),
configs (:mod:`.config`), distributed runs (:mod:`.distributed`); and,
re-exported from the floors below it, reading a checkpoint into a model
(:mod:`mmseg_pm.models.checkpoint`, :mod:`mmseg_pm.utils.checkpoint`) and
the output rule of every file a tool writes (:mod:`mmseg_pm.utils.outputs`).
Bad input raises :class:`UsageError` (or a subclass) whose message names
the problem and the fix."""
from mmseg_pm.models.checkpoint import load_checkpoint_into
from mmseg_pm.utils.checkpoint import (CheckpointError, CheckpointNotFound,
                                       cached_download, check_finite,
                                       checkpoint_state_dict,
                                       load_checkpoint_file,
                                       local_checkpoint,
                                       save_checkpoint_atomic)
from mmseg_pm.utils.errors import UsageError
from mmseg_pm.utils.outputs import (OutputError, atomic_output,
                                    check_not_input, check_output_dir,
                                    check_output_file, check_writable_dir,
                                    save_figure, umask_mode, write_atomic)

from .checkpoint import check_runner_checkpoint, runner_checkpoint
from .distributed import (PositionSeededDataset, RankBatchSampler,
                          build_rank_dataloader, check_launcher_environment,
                          end_distributed, init_distributed,
                          setup_runner_launcher, sum_across_ranks)
from .inference import build_segmentor, crop_flops, init_segmentor
from .prune import prune_config, prune_segmentor, save_pruned
from .runner import evaluate, evaluation_config, train, train_config
from .scoring import (scoring_mode, token_score_totals, token_scores,
                      token_scores_from_config)

__all__ = [
    'CheckpointError', 'CheckpointNotFound', 'OutputError', 'UsageError',
    'PositionSeededDataset', 'RankBatchSampler', 'atomic_output',
    'build_rank_dataloader', 'cached_download', 'check_finite',
    'check_launcher_environment', 'check_not_input', 'check_output_dir',
    'check_output_file', 'check_runner_checkpoint', 'check_writable_dir',
    'checkpoint_state_dict', 'end_distributed', 'init_distributed',
    'load_checkpoint_file',
    'load_checkpoint_into', 'local_checkpoint', 'runner_checkpoint',
    'save_checkpoint_atomic', 'save_figure', 'setup_runner_launcher',
    'sum_across_ranks', 'umask_mode', 'write_atomic', 'scoring_mode',
    'token_score_totals', 'token_scores', 'token_scores_from_config',
    'build_segmentor', 'crop_flops', 'init_segmentor', 'prune_config',
    'prune_segmentor', 'save_pruned', 'evaluate', 'evaluation_config',
    'train', 'train_config'
]
