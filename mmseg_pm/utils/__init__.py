from .checkpoint import (checkpoint_state_dict, load_checkpoint_file,
                         save_checkpoint_atomic)
from .flops import count_flops, vit_flops

__all__ = [
    'checkpoint_state_dict', 'count_flops', 'load_checkpoint_file',
    'save_checkpoint_atomic', 'vit_flops'
]
