from .pm_vit import PMVisionTransformer

__all__ = ['PMVisionTransformer']
