"""Datasets in their real on-disk formats, written here; errors name the path."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raylight.api import DataSpec
from raylight_trainer.data.datasets import load_data
from raylight_trainer.runtime.errors import DatasetError


def write_cifar10(root: Path, per_batch: int = 20) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, per_batch).tolist(), "batch_label": name}
        with (folder / name).open("wb") as handle:
            pickle.dump(entry, handle)
    with (folder / "batches.meta").open("wb") as handle:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, handle)
    return root


def write_cifar100(root: Path, count: int = 30) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in ("train", "test"):
        entry = {"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                 "fine_labels": rng.integers(0, 100, count).tolist(), "coarse_labels": [0] * count}
        with (folder / name).open("wb") as handle:
            pickle.dump(entry, handle)
    with (folder / "meta").open("wb") as handle:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)]}, handle)
    return root


def write_imagefolder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 6) -> Path:
    rng = np.random.default_rng(2)
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)
            pixels[..., index % 3] = 255
            suffix = "png" if i % 2 else "jpg"
            Image.fromarray(pixels).save(root / name / f"{i}.{suffix}")
    return root


def check(data, size: int, classes: int, chans: int) -> None:  # type: ignore[no-untyped-def]
    assert data.num_classes == classes and data.in_chans == chans
    for split in (data.train, data.val):
        image, label = split[0]
        assert image.shape == (chans, size, size) and image.dtype == torch.float32
        assert 0 <= label < classes


def test_digits_split_is_deterministic_and_disjoint() -> None:
    first = load_data(DataSpec(dataset="digits"), 16)
    second = load_data(DataSpec(dataset="digits"), 16)
    check(first, 16, 10, 1)
    assert len(first.train) + len(first.val) == 1797
    assert torch.equal(first.val.images, second.val.images)  # type: ignore[attr-defined]
    val_rows = {bytes(x.numpy()) for x in first.val.images}  # type: ignore[attr-defined]
    train_rows = [bytes(x.numpy()) for x in first.train.images]  # type: ignore[attr-defined]
    assert sum(row in val_rows for row in train_rows) < 20  # digits has a few exact duplicates


def test_cifar10_python_format(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    data = load_data(DataSpec(dataset="cifar10", path=str(tmp_path)), 32)
    check(data, 32, 10, 3)
    assert len(data.train) == 100 and len(data.val) == 20 and data.class_names[3] == "c3"


def test_cifar_relative_path_uses_data_dir(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "sets")
    data = load_data(DataSpec(dataset="cifar10", path="sets/cifar-10-batches-py"), 16, data_dir=tmp_path)
    check(data, 16, 10, 3)


def test_cifar100_python_format(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    check(load_data(DataSpec(dataset="cifar100", path=str(tmp_path)), 32), 32, 100, 3)


def test_imagefolder(tmp_path: Path) -> None:
    write_imagefolder(tmp_path / "pets")
    data = load_data(DataSpec(dataset="imagefolder", path=str(tmp_path / "pets"), validationFraction=0.25), 16)
    check(data, 16, 2, 3)
    assert data.class_names == ["cat", "dog"] and len(data.val) == 3


def test_synthetic() -> None:
    check(load_data(DataSpec(dataset="synthetic", syntheticClasses=4, syntheticSamples=64), 8), 8, 4, 3)


def test_missing_cifar_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=str(tmp_path / "nope")):
        load_data(DataSpec(dataset="cifar10", path=str(tmp_path / "nope")), 32)


def test_malformed_cifar_names_the_file(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="data_batch_2"):
        load_data(DataSpec(dataset="cifar10", path=str(tmp_path)), 32)


def test_imagefolder_without_classes(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty"):
        load_data(DataSpec(dataset="imagefolder", path=str(tmp_path / "empty")), 16)


@pytest.mark.parametrize(("source", "size", "channels"), [(8, 16, 1), (32, 32, 3), (32, 24, 3)])
def test_tensor_transform_does_what_torchvision_v2_does(source: int, size: int, channels: int) -> None:
    """The lean per-image transform against torchvision's v2 steps it replaces: validation exactly,
    training as one of the edge-padded crops (and their mirror images) v2 could have picked."""
    from torchvision.transforms import v2 as T

    from raylight_trainer.data.datasets import TensorTransform

    mean, std = (0.3,) * channels, (0.4,) * channels
    image = torch.randint(0, 256, (channels, source, source), dtype=torch.uint8)
    base = [T.ToDtype(torch.float32, scale=True), T.Resize(size, antialias=True)]
    expected = T.Compose([*base, T.Normalize(mean, std)])(image)
    assert torch.allclose(TensorTransform(size, mean, std, train=False, flip=True)(image), expected, atol=1e-5)

    pad = max(1, size // 8)
    padded = T.Compose([*base, T.Pad(pad, padding_mode="edge"), T.Normalize(mean, std)])(image)
    crops = [padded[:, i:i + size, j:j + size] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]
    crops += [crop.flip(-1) for crop in crops]
    train = TensorTransform(size, mean, std, train=True, flip=True)
    picked = set()
    for _ in range(60):
        out = train(image)
        matches = [k for k, crop in enumerate(crops) if torch.allclose(out, crop, atol=1e-5)]
        assert matches, "not a shifted (or mirrored) copy of the image"
        picked.add(matches[0])
    assert len(picked) > 5  # the shift (and flip) are random


@pytest.mark.parametrize(("cpus", "asked", "expected"), [
    (1, None, 0),    # a 1-CPU worker loads in its own process
    (0.5, None, 0),
    (4, None, 3),    # the CPUs it reserved beyond the one that trains
    (64, None, 8),   # at most 8
    (4, 0, 0),       # data.loaderWorkers wins
    (1, 2, 2),
])
def test_loader_workers_follow_the_cpus_a_worker_reserved(cpus: float, asked: int | None, expected: int) -> None:
    from raylight.api import TrialSpec
    from raylight_trainer.training.workers import loader_workers

    spec = TrialSpec.model_validate({"resources": {"cpusPerWorker": cpus},
                                     "data": {"dataset": "synthetic", "loaderWorkers": asked}})
    assert loader_workers(spec) == expected


def test_loaders_with_worker_processes_give_the_same_batches_as_in_process(tmp_path: Path) -> None:
    """The loaders of a 3-CPU worker load in 2 processes; validation batches (no augmentation)
    come out as they do in-process, and training batches cover the shard once."""
    from raylight.api import TrialSpec
    from raylight_trainer.training.workers import TrainingPath, build_loaders

    folder = write_imagefolder(tmp_path)
    trial = {"data": {"dataset": "imagefolder", "path": str(folder), "validationFraction": 0.25},
             "model": {"imageSize": 16, "patchSize": 4}, "training": {"batchSize": 3}}
    path = TrainingPath(world_size=1, rank=0, checkpoint=None, in_trial=True)
    batches = {}
    for cpus in (1, 3):
        spec = TrialSpec.model_validate({**trial, "resources": {"cpusPerWorker": cpus}})
        data = load_data(spec.data, 16)
        train, val = build_loaders(spec, data, path)
        assert train.num_workers == (0 if cpus == 1 else 2)
        labels = sorted(int(y) for _, ys in train for y in ys)
        assert len(labels) == len(data.train) // 3 * 3  # whole batches of the shuffled shard
        batches[cpus] = [x for x, _ in val]
    assert len(batches[1]) == len(batches[3])
    assert all(torch.equal(a, b) for a, b in zip(batches[1], batches[3], strict=True))
