"""What tools and users call from Python (mmseg's ``apis`` style)."""
from .distributed import (PositionSeededDataset, RankBatchSampler,
                          build_rank_dataloader, check_launcher_environment,
                          init_distributed, setup_runner_launcher,
                          sum_across_ranks)

__all__ = [
    'PositionSeededDataset', 'RankBatchSampler', 'build_rank_dataloader',
    'check_launcher_environment', 'init_distributed', 'setup_runner_launcher',
    'sum_across_ranks'
]
