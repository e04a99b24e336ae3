from .distill import DistillEncoderDecoder, pixel_distill_loss

__all__ = ['DistillEncoderDecoder', 'pixel_distill_loss']
