"""architecture timm: any model of the timm library, by its name, trained like our own networks.

timm builds the network (its own module names, so its checkpoints load as they are); the config
dataclass here is what checkpoints and logged models keep of it, as they do of ours.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from raylight.api import ModelSpec

DEFAULT_IMAGE_SIZE = 224


@dataclass(frozen=True)
class TimmConfig:
    name: str
    image_size: int = DEFAULT_IMAGE_SIZE
    in_chans: int = 3
    num_classes: int = 10
    dropout: float = 0.0
    drop_path: float = 0.0

    @classmethod
    def from_spec(cls, spec: ModelSpec, num_classes: int, in_chans: int = 3) -> TimmConfig:
        sizes = spec.resolved()
        name = spec.timm_name()
        return cls(name=name, image_size=int(sizes.get("image_size") or default_image_size(name)),
                   in_chans=in_chans, num_classes=num_classes, dropout=float(sizes["dropout"]),
                   drop_path=float(sizes["drop_path"]))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_pretrained_cfg(name: str) -> dict[str, Any]:
    """timm's description of the model's default weights (input size, mean and std), without them."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    return cfg.to_dict() if cfg is not None else {}


def default_image_size(name: str) -> int:
    return int(default_pretrained_cfg(name).get("input_size", (3, DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE))[-1])


def create_timm_model(cfg: TimmConfig) -> nn.Module:
    """timm's network of that name with random weights (pretrained ones are loaded separately, from
    where the spec says), sized for the dataset's classes and channels."""
    import timm

    kwargs: dict[str, Any] = {"num_classes": cfg.num_classes, "in_chans": cfg.in_chans,
                              "drop_rate": cfg.dropout, "drop_path_rate": cfg.drop_path or None}
    if default_pretrained_cfg(cfg.name).get("fixed_input_size"):
        kwargs["img_size"] = cfg.image_size  # a ViT's position embeddings are sized for one grid
    network = timm.create_model(cfg.name, pretrained=False, **{k: v for k, v in kwargs.items() if v is not None})
    setattr(network, "cfg", cfg)  # noqa: B010 (what ImageClassifier and the model card read, as on ours)
    return network
