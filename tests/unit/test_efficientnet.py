"""EfficientNet against timm's of the same multipliers: parameter counts and logits."""

from __future__ import annotations

import pytest
import torch

from raylight.api import ModelSpec
from raylight_trainer.model import EfficientNet, EfficientNetConfig, config_from_spec, count_parameters, create_model
from raylight_trainer.training.module import ImageClassifier

timm_effnet = pytest.importorskip("timm.models.efficientnet")


def reference(cfg: EfficientNetConfig) -> torch.nn.Module:
    return timm_effnet._gen_efficientnet(
        "efficientnet_b0", channel_multiplier=cfg.width_multiplier, depth_multiplier=cfg.depth_multiplier,
        pretrained=False, num_classes=cfg.num_classes, in_chans=cfg.in_chans,
    )


@pytest.mark.parametrize(("width", "depth"), [(1.0, 1.0), (0.5, 0.5), (1.1, 1.2), (0.25, 0.34)])
def test_parameter_count_and_logits_match_timm(width: float, depth: float) -> None:
    cfg = EfficientNetConfig(image_size=64, width_multiplier=width, depth_multiplier=depth, stem_stride=2,
                             num_classes=10)
    ours, ref = EfficientNet(cfg).eval(), reference(cfg).eval()
    assert count_parameters(ours) == count_parameters(ref)
    ours.load_state_dict(ref.state_dict(), strict=True)  # same names, same shapes
    images = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(ours(images), ref(images), rtol=1e-5, atol=1e-5)


def test_b0_preset_is_efficientnet_b0() -> None:
    cfg = EfficientNetConfig.from_preset("efficientnet-b0", num_classes=1000)
    assert count_parameters(EfficientNet(cfg)) == 5_288_548  # the paper's 5.3M


def test_cifar_preset_keeps_a_spatial_map_at_32px_and_every_parameter_learns() -> None:
    spec = ModelSpec.model_validate({"architecture": "efficientnet"})
    cfg = config_from_spec(spec, num_classes=10, in_chans=1)
    assert isinstance(cfg, EfficientNetConfig) and cfg.image_size == 32 and cfg.stem_stride == 1
    model = EfficientNet(cfg)
    images = torch.randn(4, 1, 32, 32)
    assert model.forward_features(images).shape == (4, model.num_features, 2, 2)
    logits = model(images)
    assert logits.shape == (4, 10)
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_residuals_only_where_shapes_allow() -> None:
    model = EfficientNet(EfficientNetConfig(width_multiplier=1.0, depth_multiplier=1.0))
    blocks = [block for stage in model.blocks for block in stage]
    assert len(blocks) == 16
    assert [b.has_skip for b in blocks].count(True) == 9  # b0: 16 blocks, 7 change shape


def test_drop_path_grows_with_depth_and_only_in_training() -> None:
    model = EfficientNet(EfficientNetConfig(drop_path=0.2))
    rates = [block.drop_path_rate for stage in model.blocks for block in stage]
    assert rates[0] == 0.0 and rates == sorted(rates) and rates[-1] < 0.2
    model.eval()
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(images), model(images))


def test_lightning_module_builds_and_restores_either_architecture(tmp_path) -> None:
    cfg = EfficientNetConfig(num_classes=3, width_multiplier=0.25, depth_multiplier=0.25).as_dict()
    module = ImageClassifier(model=cfg, training={"label_smoothing": 0.0}, architecture="efficientnet")
    assert isinstance(module.net, EfficientNet)
    assert module.hparams["architecture"] == "efficientnet"
    assert isinstance(create_model("efficientnet", cfg), EfficientNet)
