from .flops import count_flops, vit_flops

__all__ = ['count_flops', 'vit_flops']
