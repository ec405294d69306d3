"""The models a run can train, built from the spec's `model` section."""

from __future__ import annotations

from typing import Any

from torch import nn

from raylight.api import ModelSpec

from .efficientnet import EfficientNet, EfficientNetConfig
from .vit import VisionTransformer, ViTConfig, count_parameters, training_flops_per_image

ModelConfig = ViTConfig | EfficientNetConfig


def config_from_spec(spec: ModelSpec, num_classes: int, in_chans: int = 3) -> ModelConfig:
    if spec.architecture == "efficientnet":
        return EfficientNetConfig.from_spec(spec, num_classes=num_classes, in_chans=in_chans)
    return ViTConfig.from_spec(spec, num_classes=num_classes, in_chans=in_chans)


def create_model(architecture: str, config: dict[str, Any]) -> nn.Module:
    """The network for an architecture name and its config's fields (as saved in checkpoints)."""
    if architecture == "efficientnet":
        return EfficientNet(EfficientNetConfig(**config))
    return VisionTransformer(ViTConfig(**config))


__all__ = [
    "EfficientNet",
    "EfficientNetConfig",
    "ModelConfig",
    "ViTConfig",
    "VisionTransformer",
    "config_from_spec",
    "count_parameters",
    "create_model",
    "training_flops_per_image",
]
