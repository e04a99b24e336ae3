"""mmseg modules of the project; importing registers them in mmseg's MODELS."""
from .backbones import PMVisionTransformer

__all__ = ['PMVisionTransformer']
