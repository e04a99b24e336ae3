"""Pure token-compression pieces: structures, merge/reconstruct, configs,
score arithmetic, every reducer and the method registry
(:mod:`.registry`: one description per method).

Every method module is imported here, in the order the tools list the
methods: importing one registers it (``register(SPEC)``). A new method is
one module and one line here.

Only torch is imported here, never mmseg or mmengine
(tests/compression/test_purity.py checks it), so it can be used and tested
on its own.
"""
# the methods, registered in this order (the order of tables and plots)
from . import merge  # noqa: F401  (isort: skip)
from . import mstm  # noqa: F401  (isort: skip)
from . import tome  # noqa: F401  (isort: skip)
from . import hourglass  # noqa: F401  (isort: skip)
from . import algm  # noqa: F401  (isort: skip)
from . import mpm  # noqa: F401  (isort: skip)
from .merge import PMConfig, PruneAndMerge
from .reducer import TokenReducer
from .ops import merge_matrix, reconstruct_matrix
from .unit import ASSIGNS, RECONSTRUCTS, TokenCompressor
from .scoring import (attention_scores, check_depth_lambda,
                      normalise_scores, scores_from_totals)
from .search import (DEFAULT_PLACEMENT, PLACEMENTS, RANKINGS, grid_cells, layer_token_counts,
                     place_centres, search_structures, select_tokens,
                     token_budget, unit_scores)
from .structure import (CompressionStructure, assign_groups, build_structure,
                        lattice_centres, lattice_structure, mean_merge_weights,
                        nearest_rule_groups, reconstruct_weights,
                        row_rule_groups)

__all__ = [
    'TokenReducer', 'PruneAndMerge',
    'PMConfig', 'CompressionStructure', 'TokenCompressor',
    'assign_groups', 'build_structure', 'lattice_centres',
    'lattice_structure', 'merge_matrix',
    'nearest_rule_groups', 'reconstruct_matrix',
    'reconstruct_weights', 'row_rule_groups', 'attention_scores',
    'normalise_scores', 'check_depth_lambda', 'scores_from_totals',
    'RANKINGS', 'layer_token_counts', 'search_structures', 'select_tokens',
    'token_budget', 'unit_scores', 'RECONSTRUCTS', 'ASSIGNS', 'PLACEMENTS', 'DEFAULT_PLACEMENT', 'grid_cells',
    'place_centres', 'mean_merge_weights'
]
