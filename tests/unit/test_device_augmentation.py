"""data.deviceAugmentation: whole uint8 batches transformed on the training device compute what the
per-image transform computes, image for image, and the module applies them to every batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from raylight.api import DataSpec
from raylight_trainer.data.datasets import (
    BatchTransform,
    TensorTransform,
    for_device_augmentation,
    load_data,
)
from raylight_trainer.model import ViTConfig
from raylight_trainer.training.module import ImageClassifier
from tests.unit.test_compile import TRAINING
from tests.unit.test_data import write_cifar10, write_imagefolder


def replayed_draws(transform: TensorTransform, count: int, seed: int) -> tuple[torch.Tensor, ...]:
    """The shifts and flips the per-image transform draws for `count` images after manual_seed(seed)."""
    torch.manual_seed(seed)
    tops, lefts, flips = [], [], []
    for _ in range(count):
        top, left = torch.randint(0, 2 * transform.pad + 1, (2,)).tolist() if transform.pad else (0, 0)
        flips.append(bool(transform.flip and torch.rand(1).item() < 0.5))
        tops.append(top)
        lefts.append(left)
    return torch.tensor(tops), torch.tensor(lefts), torch.tensor(flips)


@pytest.mark.parametrize(("channels", "source", "size", "train", "flip", "divisor"), [
    (1, 8, 16, True, False, 16),   # digits: upscaled, shifted by half a source pixel, never flipped
    (3, 32, 32, True, True, 8),    # CIFAR at its own size: shifted and flipped
    (3, 32, 24, True, True, 8),    # CIFAR downscaled
    (3, 32, 24, False, True, 8),   # validation: resized and normalised only
])
def test_a_batch_on_the_device_is_each_image_transformed_alone(
        channels: int, source: int, size: int, train: bool, flip: bool, divisor: int) -> None:
    per_image = TensorTransform(size, (0.4,) * channels, (0.3,) * channels, train, flip, shift_divisor=divisor)
    images = torch.randint(0, 256, (12, channels, source, source), dtype=torch.uint8)
    torch.manual_seed(7)
    alone = torch.stack([per_image(image) for image in images])
    tops, lefts, flips = replayed_draws(per_image, len(images), 7)
    together = BatchTransform(per_image).apply(images, tops, lefts, flips)
    assert together.shape == (12, channels, size, size)
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-6)
    if train and flip:
        assert flips.any() and not flips.all(), "both branches compared"
    sampled = BatchTransform(per_image)(images)  # its own draws: the same shape, the same value range
    assert sampled.shape == together.shape and sampled.dtype == torch.float32


def test_only_datasets_held_in_memory_move_their_transforms_to_the_device(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "cifar")
    cifar = load_data(DataSpec(dataset="cifar10", path=str(tmp_path / "cifar")), 24)
    moved = for_device_augmentation(cifar)
    assert moved is not None
    raw, _, val = moved
    image, _ = raw.train[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32), "the loaders gather uint8 images"
    torch.testing.assert_close(val(torch.stack([raw.val[i][0] for i in range(4)])),
                               torch.stack([cifar.val[i][0] for i in range(4)]), rtol=0, atol=1e-6)
    write_imagefolder(tmp_path / "pets")
    assert for_device_augmentation(load_data(DataSpec(dataset="imagefolder", path=str(tmp_path / "pets")), 16)) is None


def test_the_module_transforms_each_batch_and_validates_as_the_loader_path_does() -> None:
    data = load_data(DataSpec(dataset="synthetic", synthetic_samples=64, synthetic_classes=4), 16)
    moved = for_device_augmentation(data)
    assert moved is not None
    raw, train_tf, val_tf = moved
    cfg = ViTConfig(image_size=16, patch_size=4, dim=32, depth=1, heads=2, num_classes=4)
    torch.manual_seed(0)
    on_device = ImageClassifier(model=cfg.as_dict(), training=TRAINING)
    in_loader = ImageClassifier(model=cfg.as_dict(), training=TRAINING)
    in_loader.load_state_dict(on_device.state_dict())
    on_device.batch_transforms = train_tf, val_tf
    results = []
    for module, dataset in ((on_device, raw.val), (in_loader, data.val)):
        trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                             enable_model_summary=False)
        results.append(trainer.validate(module, DataLoader(dataset, batch_size=5), verbose=False)[0])
    assert results[0]["val_loss"] == pytest.approx(results[1]["val_loss"], rel=1e-6)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    fitted = ImageClassifier(model=cfg.as_dict(), training=TRAINING)  # (validate left inference tensors)
    fitted.batch_transforms = train_tf, val_tf
    trainer.fit(fitted, DataLoader(raw.train, batch_size=8), DataLoader(raw.val, batch_size=8))
    assert trainer.state.finished and "val_acc" in trainer.callback_metrics, "it trains on uint8 batches"
