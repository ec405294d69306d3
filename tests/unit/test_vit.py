"""The ViT against timm's VisionTransformer of the same dimensions."""

from __future__ import annotations

import itertools

import pytest
import torch

from raylight.api import ModelSpec
from raylight_trainer.model import VisionTransformer, ViTConfig, count_parameters
from raylight_trainer.training.module import ImageClassifier, parameter_groups, warmup_cosine

timm_vit = pytest.importorskip("timm.models.vision_transformer")


def reference(cfg: ViTConfig) -> torch.nn.Module:
    return timm_vit.VisionTransformer(
        img_size=cfg.image_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, num_classes=cfg.num_classes,
        embed_dim=cfg.dim, depth=cfg.depth, num_heads=cfg.heads, mlp_ratio=cfg.mlp_ratio,
    )


@pytest.mark.parametrize("preset", ["vit-nano", "vit-cifar", "vit-tiny", "vit-small", "vit-base"])
def test_parameter_count_matches_timm_exactly(preset: str) -> None:
    cfg = ViTConfig.from_preset(preset, num_classes=100)
    assert count_parameters(VisionTransformer(cfg)) == count_parameters(reference(cfg))


@pytest.mark.parametrize("in_chans", [1, 3])
def test_same_weights_give_the_same_logits_as_timm(in_chans: int) -> None:
    cfg = ViTConfig.from_preset("vit-nano", num_classes=7, in_chans=in_chans, depth=3)
    ours, ref = VisionTransformer(cfg).eval(), reference(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    images = torch.randn(5, in_chans, cfg.image_size, cfg.image_size)
    torch.testing.assert_close(ours(images), ref(images), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.forward_features(images), ref.forward_features(images), rtol=1e-5, atol=1e-5)


def test_shapes_and_every_parameter_gets_a_gradient() -> None:
    cfg = ViTConfig(image_size=16, patch_size=4, in_chans=3, num_classes=10, dim=32, depth=2, heads=4,
                    dropout=0.1, drop_path=0.1)
    model = VisionTransformer(cfg).train()
    images = torch.randn(4, 3, 16, 16)
    tokens = model.forward_features(images)
    assert tokens.shape == (4, cfg.num_patches + 1, 32)
    logits = model.forward_head(tokens)
    assert logits.shape == (4, 10)
    logits.sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_overrides_apply_over_the_preset() -> None:
    spec = ModelSpec(preset="vit-cifar", depth=2, dim=64, heads=4)
    cfg = ViTConfig.from_spec(spec, num_classes=10)
    assert (cfg.image_size, cfg.patch_size, cfg.depth, cfg.dim) == (32, 4, 2, 64)


def test_no_weight_decay_on_norms_biases_and_embeddings() -> None:
    model = VisionTransformer(ViTConfig(depth=1))
    decay, no_decay = parameter_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert "pos_embed" not in decayed and "cls_token" not in decayed
    assert all(not n.endswith("bias") and "norm" not in n for n in decayed)
    assert "blocks.0.attn.qkv.weight" in decayed
    assert no_decay["weight_decay"] == 0.0


def test_warmup_then_cosine() -> None:
    factors = [warmup_cosine(s, warmup_steps=10, total_steps=110) for s in range(111)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[60] == pytest.approx(0.5) and factors[110] == pytest.approx(0.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))


def test_lightning_module_saves_its_hyperparameters() -> None:
    module = ImageClassifier(model=ViTConfig(depth=1).as_dict(), training={"label_smoothing": 0.1})
    assert module.hparams["model"]["depth"] == 1
    assert module.hparams["training"]["label_smoothing"] == 0.1
