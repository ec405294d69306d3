"""Vision Transformer (Dosovitskiy et al., 2021) as a plain nn.Module.

Module names and shapes follow timm's VisionTransformer, so parameter counts match it
exactly and its state dicts load as-is (tests use that to check the maths, not only shapes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raylight.api import VIT_PRESETS, ModelSpec

from .fused import bias_gelu


@dataclass(frozen=True)
class ViTConfig:
    image_size: int = 16
    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 10
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    drop_path: float = 0.0
    fused_mlp: bool = False

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_preset(cls, name: str, **overrides: int | float) -> ViTConfig:
        values = {**VIT_PRESETS[name], **overrides}
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def from_spec(cls, spec: ModelSpec, num_classes: int, in_chans: int = 3) -> ViTConfig:
        sizes = spec.resolved()
        return cls(
            image_size=int(sizes["image_size"]),
            patch_size=int(sizes["patch_size"]),
            dim=int(sizes["dim"]),
            depth=int(sizes["depth"]),
            heads=int(sizes["heads"]),
            mlp_ratio=float(sizes["mlp_ratio"]),
            dropout=float(sizes["dropout"]),
            drop_path=float(sizes["drop_path"]),
            fused_mlp=bool(sizes.get("fused_mlp", False)),
            num_classes=num_classes,
            in_chans=in_chans,
        )

    def as_dict(self) -> dict[str, int | float]:
        return asdict(self)


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens, as one strided convolution."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        # Read by timm's checkpoint filter, to resample position embeddings of another grid.
        self.grid_size = (cfg.image_size // cfg.patch_size, cfg.image_size // cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.attn_dropout = dropout
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        # Dispatches to flash / memory-efficient kernels where the device has them.
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, tokens, dim)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float, fused: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Same parameters either way, so checkpoints move freely between the two paths.
        fused = self.fused
        hidden = bias_gelu(F.linear(x, self.fc1.weight), self.fc1.bias) if fused else F.gelu(self.fc1(x))
        return self.drop(self.fc2(self.drop(hidden)))


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: ViTConfig, drop_path_rate: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.attn = Attention(cfg.dim, cfg.heads, cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.mlp = Mlp(cfg.dim, int(cfg.dim * cfg.mlp_ratio), cfg.dropout, cfg.fused_mlp)
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path_rate, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, self.training)


class VisionTransformer(nn.Module):
    # The class token before the patches: what timm's position-embedding resampling keeps apart.
    num_prefix_tokens = 1

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes, self.in_chans = cfg.num_classes, cfg.in_chans
        # What timm's loader reads to adapt a checkpoint: the classifier to drop for another class
        # count, the convolution to adapt to other input channels, the input it was made for.
        self.pretrained_cfg = {"classifier": "head", "first_conv": "patch_embed.proj", "num_classes": cfg.num_classes,
                               "input_size": (cfg.in_chans, cfg.image_size, cfg.image_size)}
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, cfg.dim))
        self.pos_drop = nn.Dropout(cfg.dropout)
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.Sequential(*(Block(cfg, rate) for rate in rates))
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameters that weight decay would only hurt (beside every norm and bias)."""
        return {"pos_embed", "cls_token"}

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Layer groups for layer-wise learning-rate decay, as timm's VisionTransformer has them:
        the embeddings first, a group per block, then the final norm (the head is last)."""
        return {"stem": r"^cls_token|pos_embed|patch_embed",
                "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))]}

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> normalised tokens (B, 1 + N, D); token 0 is the class token."""
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        return self.norm(self.blocks(x))

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Class-token logits (B, num_classes)."""
        return self.head(tokens[:, 0])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def training_flops_per_image(cfg: ViTConfig) -> float:
    """Forward + backward FLOPs of one image (3x forward; matmuls and attention only)."""
    tokens = cfg.num_patches + 1
    hidden = int(cfg.dim * cfg.mlp_ratio)
    per_block = 2 * tokens * (cfg.dim * 3 * cfg.dim + cfg.dim * cfg.dim + 2 * cfg.dim * hidden)
    per_block += 2 * 2 * tokens * tokens * cfg.dim  # q @ k^T and attn @ v
    embed = 2 * cfg.num_patches * cfg.in_chans * cfg.patch_size**2 * cfg.dim
    forward = cfg.depth * per_block + embed + 2 * cfg.dim * cfg.num_classes
    return 3.0 * forward
