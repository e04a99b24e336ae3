"""mmseg modules of the project. Importing this package maps the
``mmseg::`` config scope to the installed mmseg distribution (first, so a
config read afterwards resolves) and registers the modules in mmseg's
MODELS (and, through :mod:`mmseg_pm.engine`, the hooks and metric that
write the Runner's files atomically)."""
import warnings

# mmcv without compiled ops warns on import about a CUDA op we never use.
warnings.filterwarnings(
    'ignore', message='Fail to import ``MultiScaleDeformableAttention``')

from mmseg_pm.config_scope import register_mmseg_config_scope  # noqa: E402

register_mmseg_config_scope()

from .backbones import PMVisionTransformer  # noqa: E402
from .segmentors import DistillEncoderDecoder  # noqa: E402
import mmseg_pm.engine  # noqa: E402,F401  (the Runner's atomic writers)

__all__ = ['PMVisionTransformer', 'DistillEncoderDecoder']
