from .vit import VisionTransformer, ViTConfig, count_parameters, training_flops_per_image

__all__ = ["ViTConfig", "VisionTransformer", "count_parameters", "training_flops_per_image"]
