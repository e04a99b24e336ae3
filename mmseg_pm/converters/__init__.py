"""Weights in: pure key-mapping functions for foreign ViT / Segmenter
checkpoints (used by ``tools/model_converters/*2mmseg_pm.py`` and tests)."""
from .io import (check_destination, load_weights_file, save_converted,
                 unwrap_state_dict)
from .segmenter import (LINEAR_DECODER_KEYS, MASK_DECODER_KEYS,
                        MASK_DECODER_TRANSPOSED, PM_MATRIX_KEYS,
                        compression_config, compressor_state,
                        convert_decoder, convert_pm_matrices,
                        convert_segmenter, infer_grid, pm_units,
                        structure_from_matrices)
from .timm_vit import (TIMM_BLOCK_KEYS, TIMM_TOP_KEYS, ConversionError,
                       convert_timm_vit, map_timm_key)

__all__ = [
    'ConversionError', 'LINEAR_DECODER_KEYS', 'MASK_DECODER_KEYS',
    'MASK_DECODER_TRANSPOSED', 'PM_MATRIX_KEYS', 'TIMM_BLOCK_KEYS',
    'TIMM_TOP_KEYS', 'check_destination', 'compression_config',
    'compressor_state', 'convert_decoder', 'convert_pm_matrices',
    'convert_segmenter', 'convert_timm_vit', 'infer_grid',
    'load_weights_file', 'map_timm_key', 'pm_units', 'save_converted',
    'structure_from_matrices', 'unwrap_state_dict'
]
