"""mmseg_pm: Prune-and-Merge token compression for plain-ViT segmenters.

``import mmseg_pm`` registers the project's modules in mmseg's registries
and makes ``mmseg::`` config inheritance work with the OneDL mmseg fork.
"""
import warnings

# mmcv without compiled ops warns on import about a CUDA op we never use.
warnings.filterwarnings('ignore', message='Fail to import ``MultiScaleDeformableAttention``')

from .config_scope import register_mmseg_config_scope  # noqa: E402

register_mmseg_config_scope()

from . import models  # noqa: E402,F401  (registers modules)

__version__ = '0.1.0'
