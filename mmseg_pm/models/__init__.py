"""mmseg modules of the project; importing registers them in mmseg's MODELS."""
from .backbones import PMVisionTransformer
from .segmentors import DistillEncoderDecoder

__all__ = ['PMVisionTransformer', 'DistillEncoderDecoder']
