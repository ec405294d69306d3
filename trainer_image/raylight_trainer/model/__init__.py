"""The models a run can train, built from the spec's `model` section."""

from __future__ import annotations

from typing import Any

from torch import nn

from raylight.api import ModelSpec

from .efficientnet import EfficientNet, EfficientNetConfig
from .timm_models import TimmConfig, create_timm_model
from .vit import VisionTransformer, ViTConfig, count_parameters, training_flops_per_image

ModelConfig = ViTConfig | EfficientNetConfig | TimmConfig


def config_from_spec(spec: ModelSpec, num_classes: int, in_chans: int = 3) -> ModelConfig:
    if spec.architecture == "timm":
        return TimmConfig.from_spec(spec, num_classes=num_classes, in_chans=in_chans)
    if spec.architecture == "efficientnet":
        return EfficientNetConfig.from_spec(spec, num_classes=num_classes, in_chans=in_chans)
    return ViTConfig.from_spec(spec, num_classes=num_classes, in_chans=in_chans)


def spec_image_size(spec: ModelSpec) -> int:
    """The side of the images the model takes: the spec's (or its preset's), else a timm model's default."""
    sizes = spec.resolved()
    if "image_size" in sizes:
        return int(sizes["image_size"])
    from .timm_models import default_image_size

    return default_image_size(spec.timm_name())


def create_model(architecture: str, config: dict[str, Any]) -> nn.Module:
    """The network for an architecture name and its config's fields (as saved in checkpoints)."""
    if architecture == "timm":
        return create_timm_model(TimmConfig(**config))
    if architecture == "efficientnet":
        return EfficientNet(EfficientNetConfig(**config))
    return VisionTransformer(ViTConfig(**config))


__all__ = [
    "EfficientNet",
    "EfficientNetConfig",
    "ModelConfig",
    "TimmConfig",
    "ViTConfig",
    "VisionTransformer",
    "config_from_spec",
    "count_parameters",
    "create_model",
    "spec_image_size",
    "training_flops_per_image",
]
