"""EfficientNet (Tan & Le, 2019) as a plain nn.Module: MBConv blocks with squeeze-and-excitation.

Module names, channel rounding and block layout follow timm's EfficientNet, so parameter counts
match it exactly and its state dicts load as-is (the tests use that to check the maths).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from raylight.api import EFFICIENTNET_PRESETS, ModelSpec

from .vit import drop_path

# (kind, repeats, kernel, stride, expansion, channels) of EfficientNet-B0's stages; every block
# has squeeze-and-excitation at a quarter of its input width. "ds": depthwise separable (no
# expansion), "ir": inverted residual (MBConv).
B0_STAGES: tuple[tuple[str, int, int, int, int, int], ...] = (
    ("ds", 1, 3, 1, 1, 16),
    ("ir", 2, 3, 2, 6, 24),
    ("ir", 2, 5, 2, 6, 40),
    ("ir", 3, 3, 2, 6, 80),
    ("ir", 3, 5, 1, 6, 112),
    ("ir", 4, 5, 2, 6, 192),
    ("ir", 1, 3, 1, 6, 320),
)
SE_RATIO = 0.25
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280


def make_divisible(value: float, divisor: int = 8) -> int:
    """Nearest multiple of divisor, never more than 10% below value (the paper's channel rounding)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@dataclass(frozen=True)
class EfficientNetConfig:
    image_size: int = 32
    in_chans: int = 3
    num_classes: int = 10
    width_multiplier: float = 0.5
    depth_multiplier: float = 0.5
    stem_stride: int = 2
    dropout: float = 0.0
    drop_path: float = 0.0

    def channels(self, base: int) -> int:
        return make_divisible(base * self.width_multiplier)

    def repeats(self, base: int) -> int:
        return math.ceil(base * self.depth_multiplier)

    @classmethod
    def from_preset(cls, name: str, **overrides: int | float) -> EfficientNetConfig:
        return cls(**{**EFFICIENTNET_PRESETS[name], **overrides})  # type: ignore[arg-type]

    @classmethod
    def from_spec(cls, spec: ModelSpec, num_classes: int, in_chans: int = 3) -> EfficientNetConfig:
        sizes = spec.resolved()
        return cls(
            image_size=int(sizes["image_size"]),
            width_multiplier=float(sizes["width_multiplier"]),
            depth_multiplier=float(sizes["depth_multiplier"]),
            stem_stride=int(sizes["stem_stride"]),
            dropout=float(sizes["dropout"]),
            drop_path=float(sizes["drop_path"]),
            num_classes=num_classes,
            in_chans=in_chans,
        )

    def as_dict(self) -> dict[str, int | float]:
        return asdict(self)


def conv_bn(in_chs: int, out_chs: int, kernel: int, stride: int = 1,
            groups: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv = nn.Conv2d(in_chs, out_chs, kernel, stride, padding=kernel // 2, groups=groups, bias=False)
    return conv, nn.BatchNorm2d(out_chs)


class SqueezeExcite(nn.Module):
    """Channel gates from globally pooled features: reduce, SiLU, expand, sigmoid."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.conv_expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.conv_expand(nn.functional.silu(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * gate.sigmoid()


class DepthwiseSeparable(nn.Module):
    """Depthwise conv, SE, pointwise projection (the first stage: no expansion)."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int, drop_path_rate: float) -> None:
        super().__init__()
        self.conv_dw, self.bn1 = conv_bn(in_chs, in_chs, kernel, stride, groups=in_chs)
        self.se = SqueezeExcite(in_chs, round(in_chs * SE_RATIO))
        self.conv_pw, self.bn2 = conv_bn(in_chs, out_chs, 1)
        self.has_skip = stride == 1 and in_chs == out_chs
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv_pw(self.se(nn.functional.silu(self.bn1(self.conv_dw(x))))))
        return x + drop_path(out, self.drop_path_rate, self.training) if self.has_skip else out


class InvertedResidual(nn.Module):
    """MBConv: pointwise expansion, depthwise conv, SE, linear projection, residual where shapes allow."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int, expansion: int,
                 drop_path_rate: float) -> None:
        super().__init__()
        mid = make_divisible(in_chs * expansion)
        self.conv_pw, self.bn1 = conv_bn(in_chs, mid, 1)
        self.conv_dw, self.bn2 = conv_bn(mid, mid, kernel, stride, groups=mid)
        self.se = SqueezeExcite(mid, round(in_chs * SE_RATIO))  # SE width from the block's input
        self.conv_pwl, self.bn3 = conv_bn(mid, out_chs, 1)
        self.has_skip = stride == 1 and in_chs == out_chs
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        silu = nn.functional.silu
        out = silu(self.bn2(self.conv_dw(silu(self.bn1(self.conv_pw(x))))))
        out = self.bn3(self.conv_pwl(self.se(out)))
        return x + drop_path(out, self.drop_path_rate, self.training) if self.has_skip else out


class EfficientNet(nn.Module):
    def __init__(self, cfg: EfficientNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes, self.in_chans = cfg.num_classes, cfg.in_chans
        # What timm's loader reads to adapt a checkpoint (see VisionTransformer).
        self.pretrained_cfg = {"classifier": "classifier", "first_conv": "conv_stem", "num_classes": cfg.num_classes,
                               "input_size": (cfg.in_chans, cfg.image_size, cfg.image_size)}
        stem = cfg.channels(STEM_CHANNELS)
        self.conv_stem, self.bn1 = conv_bn(cfg.in_chans, stem, 3, cfg.stem_stride)
        plan = [(kind, kernel, stride, expansion, cfg.channels(chs), cfg.repeats(repeats))
                for kind, repeats, kernel, stride, expansion, chs in B0_STAGES]
        total = sum(count for *_, count in plan)
        stages: list[nn.Sequential] = []
        in_chs, index = stem, 0
        for kind, kernel, stride, expansion, out_chs, count in plan:
            blocks: list[nn.Module] = []
            for repeat in range(count):
                rate = cfg.drop_path * index / total  # stochastic depth grows with depth
                block_stride = stride if repeat == 0 else 1
                if kind == "ds":
                    blocks.append(DepthwiseSeparable(in_chs, out_chs, kernel, block_stride, rate))
                else:
                    blocks.append(InvertedResidual(in_chs, out_chs, kernel, block_stride, expansion, rate))
                in_chs, index = out_chs, index + 1
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.num_features = make_divisible(HEAD_CHANNELS * cfg.width_multiplier)
        self.conv_head, self.bn2 = conv_bn(in_chs, self.num_features, 1)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(self.num_features, cfg.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                bound = 1.0 / math.sqrt(module.weight.shape[0])
                nn.init.uniform_(module.weight, -bound, bound)
                nn.init.zeros_(module.bias)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Layer groups for layer-wise learning-rate decay, as timm's EfficientNet has them: the stem,
        a group per block (per stage when coarse), then the head's convolution."""
        blocks = r"^blocks\.(\d+)" if coarse else r"^blocks\.(\d+)\.(\d+)"
        return {"stem": r"^conv_stem|bn1", "blocks": [(blocks, None), (r"conv_head|bn2", (99999,))]}

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> feature map (B, num_features, H', W')."""
        x = nn.functional.silu(self.bn1(self.conv_stem(images)))
        x = self.blocks(x)
        return nn.functional.silu(self.bn2(self.conv_head(x)))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Global average pool, dropout, logits (B, num_classes)."""
        return self.classifier(self.dropout(features.mean((2, 3))))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))
