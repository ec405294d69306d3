"""Datasets: digits (bundled), CIFAR-10/100 (python format on disk), ImageFolder, synthetic.

Every loader returns train and validation `torch.utils.data.Dataset`s of (image, label) with
images as float tensors (C, imageSize, imageSize), normalised, training ones augmented.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset
from torchvision import datasets as tv_datasets
from torchvision.transforms import v2 as T

from raylight.api import DataSpec
from raylight.api.cluster import is_object_store

from ..runtime.errors import DatasetError
from .cache import cached_dataset

FILE_DATASETS = ("cifar10", "cifar100", "imagefolder")
# The validation split must not depend on the trial's seed: trials are compared on it.
SPLIT_SEED = 0
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Per dataset, the (mean, std) every image is normalised with after scaling pixels to [0, 1]; the
# logged model's metadata repeats it, for whoever feeds it images without Raylight.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "digits": ((0.3,), (0.38,)),
    "cifar10": (CIFAR_MEAN, CIFAR_STD),
    "cifar100": (CIFAR_MEAN, CIFAR_STD),
    "imagefolder": (IMAGENET_MEAN, IMAGENET_STD),
    "synthetic": ((0.5,) * 3, (0.25,) * 3),
}


Normalization = tuple[tuple[float, ...], tuple[float, ...]]


def fitted(normalization: Normalization | None, default: Normalization, chans: int) -> Normalization:
    """The normalisation to apply: the dataset's, or the one pretrained weights were trained with
    (spec.model.pretrained), fitted to the images' channels (a grayscale image, given to an RGB
    network's adapted first convolution, is every channel at once: their mean mean and std)."""
    if normalization is None:
        return default
    mean, std = (tuple(float(v) for v in values) for values in normalization)
    if len(mean) == chans:
        return mean, std
    if chans == 1:
        return (sum(mean) / len(mean),), (sum(std) / len(std),)
    return (mean[0],) * chans, (std[0],) * chans


@dataclass
class ImageData:
    train: Dataset
    val: Dataset
    num_classes: int
    in_chans: int
    class_names: list[str]
    # The normalisation applied to every image: pictures undo it, baselines start from it.
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)


class TensorImages(Dataset):
    """Images held in memory as a uint8 tensor (N, C, H, W), transformed per item (or given as they
    are, for a BatchTransform on the device)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: TensorTransform | None) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        return (self.transform(image) if self.transform is not None else image), int(self.labels[index])


class Transformed(Dataset):
    """A view of a dataset with its own transform (train and val share files, not augmentation)."""

    def __init__(self, base: Dataset, transform: T.Transform) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        return self.transform(image), int(label)


def _split(count: int, fraction: float) -> tuple[list[int], list[int]]:
    order = torch.randperm(count, generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    n_val = max(1, round(count * fraction))
    return order[n_val:], order[:n_val]


class TensorTransform:
    """A uint8 image tensor (C, H, W), square, to the model's input: scaled to [0, 1], resized to
    `size` (bilinear, antialiased), for training shifted by up to size // shift_divisor pixels
    (edge-padded random crop) and flipped if asked, then normalised.

    The same steps as torchvision's v2 Resize, RandomCrop(padding_mode="edge"),
    RandomHorizontalFlip and Normalize, in plain tensor ops: v2 dispatches each call through
    Python machinery that costs ten times the work on small images (a quickstart epoch spent a
    sixth of its time there)."""

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...], train: bool, flip: bool,
                 shift_divisor: int = 8) -> None:
        self.size = size
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.pad = max(1, size // shift_divisor) if train else 0
        self.flip = flip and train

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        x = image.to(torch.float32).div_(255.0)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear", antialias=True,
                              align_corners=False)[0]
        x = (x - self.mean) / self.std  # before the padding: it only repeats edge pixels
        if self.pad:
            x = F.pad(x[None], (self.pad,) * 4, mode="replicate")[0]
            top, left = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
            x = x[:, top:top + self.size, left:left + self.size]
        if self.flip and torch.rand(1).item() < 0.5:
            x = x.flip(-1)
        return x.contiguous()


class BatchTransform:
    """TensorTransform for a whole uint8 batch (B, C, H, W), on whatever device it is: the same
    steps, with each image's own shift and flip (data.deviceAugmentation)."""

    def __init__(self, per_image: TensorTransform) -> None:
        self.size, self.pad, self.flip = per_image.size, per_image.pad, per_image.flip
        self.mean, self.std = per_image.mean[None], per_image.std[None]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        count, device = len(images), images.device
        shifts = torch.randint(0, 2 * self.pad + 1, (2, count), device=device)
        flips = torch.rand(count, device=device) < 0.5
        return self.apply(images, shifts[0], shifts[1], flips)

    def apply(self, images: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor,
              flips: torch.Tensor) -> torch.Tensor:
        """The batch transformed with the given shifts (pixels from the padded corner) and flips."""
        x = images.to(torch.float32).div_(255.0)
        size = self.size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        if self.pad:
            x = F.pad(x, (self.pad,) * 4, mode="replicate")
            steps = torch.arange(size, device=x.device)
            rows, cols = tops[:, None] + steps, lefts[:, None] + steps  # (B, size) each
            batch = torch.arange(len(x), device=x.device)[:, None, None]
            x = x.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        if self.flip:
            x = torch.where(flips[:, None, None, None], x.flip(-1), x)
        return x.contiguous()


def for_device_augmentation(data: ImageData) -> tuple[ImageData, BatchTransform, BatchTransform] | None:
    """The same datasets yielding untransformed uint8 images, and the transforms to apply to their
    batches on the device (train, validation); None where the images are not held in memory."""
    train, val = data.train, data.val
    if not (isinstance(train, TensorImages) and isinstance(val, TensorImages)):
        return None
    if train.transform is None or val.transform is None:
        return None
    raw = ImageData(
        train=TensorImages(train.images, train.labels, None), val=TensorImages(val.images, val.labels, None),
        num_classes=data.num_classes, in_chans=data.in_chans, class_names=data.class_names, mean=data.mean,
        std=data.std,
    )
    return raw, BatchTransform(train.transform), BatchTransform(val.transform)


def load_digits(spec: DataSpec, image_size: int, normalization: Normalization | None = None) -> ImageData:
    """scikit-learn's 8x8 digits (1797 images, bundled with the package), upscaled to imageSize."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = (torch.from_numpy(bunch.images).float() * (255.0 / 16.0)).round().to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(bunch.target).long()
    train_idx, val_idx = _split(len(labels), spec.validation_fraction)
    mean, std = fitted(normalization, NORMALIZATION["digits"], 1)
    # No flips (a mirrored digit is another symbol) and shifts of at most half a source pixel:
    # at 8x8 a whole pixel is an eighth of the glyph and costs more accuracy than it buys.
    train_tf = TensorTransform(image_size, mean, std, True, False, shift_divisor=16)
    return ImageData(
        train=TensorImages(images[train_idx], labels[train_idx], train_tf),
        val=TensorImages(images[val_idx], labels[val_idx], TensorTransform(image_size, mean, std, False, False)),
        num_classes=10,
        in_chans=1,
        class_names=[str(d) for d in range(10)],
        mean=mean,
        std=std,
    )


def _cifar_root(path: Path, variant: str) -> Path:
    """Accept the extracted folder itself or its parent."""
    folder = "cifar-10-batches-py" if variant == "cifar10" else "cifar-100-python"
    if (path / folder).is_dir():
        return path
    if path.name == folder and path.is_dir():
        return path.parent
    raise DatasetError(
        f"{variant} directory {path} not found: expected {path / folder} (the python version of the dataset, "
        f"extracted) or that folder itself; set data.path or --data-dir"
    )


def _read_cifar_batch(file: Path, label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with file.open("rb") as handle:
            entry = pickle.load(handle, encoding="latin1")
        data = torch.as_tensor(entry["data"], dtype=torch.uint8).reshape(-1, 3, 32, 32)
        labels = torch.as_tensor(entry[label_key], dtype=torch.long)
    except FileNotFoundError as exc:
        raise DatasetError(f"missing CIFAR file {file}") from exc
    except (pickle.UnpicklingError, KeyError, EOFError, RuntimeError, ValueError) as exc:
        raise DatasetError(f"malformed CIFAR file {file}: {exc}") from exc
    if len(labels) != len(data):
        raise DatasetError(f"malformed CIFAR file {file}: {len(data)} images but {len(labels)} labels")
    return data, labels


def load_cifar(spec: DataSpec, image_size: int, data_dir: Path | None,
               normalization: Normalization | None = None) -> ImageData:
    """CIFAR-10/100 in the python pickle format (the layout torchvision's CIFAR10 reads).

    Read here without torchvision's checksum check, so re-packed or subsampled copies work.
    """
    variant = spec.dataset
    root = _cifar_root(_resolve(spec.path, data_dir), variant)
    if variant == "cifar10":
        base = root / "cifar-10-batches-py"
        train_files = [base / f"data_batch_{i}" for i in range(1, 6)]
        val_files, label_key = [base / "test_batch"], "labels"
        meta_file, names_key = base / "batches.meta", "label_names"
    else:
        base = root / "cifar-100-python"
        train_files, val_files, label_key = [base / "train"], [base / "test"], "fine_labels"
        meta_file, names_key = base / "meta", "fine_label_names"
    present = [f for f in train_files if f.exists()]
    if not present:
        raise DatasetError(f"no training batches in {base}: expected {', '.join(f.name for f in train_files)}")
    train = [_read_cifar_batch(f, label_key) for f in present]
    val = [_read_cifar_batch(f, label_key) for f in val_files]
    num_classes = 10 if variant == "cifar10" else 100
    names = [str(i) for i in range(num_classes)]
    if meta_file.exists():
        with meta_file.open("rb") as handle:
            names = list(pickle.load(handle, encoding="latin1")[names_key])
    train_x, train_y = torch.cat([x for x, _ in train]), torch.cat([y for _, y in train])
    val_x, val_y = torch.cat([x for x, _ in val]), torch.cat([y for _, y in val])
    for split, labels in (("train", train_y), ("test", val_y)):
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise DatasetError(f"malformed {variant} {split} labels in {base}: outside 0..{num_classes - 1}")
    mean, std = fitted(normalization, (CIFAR_MEAN, CIFAR_STD), 3)
    return ImageData(
        train=TensorImages(train_x, train_y, TensorTransform(image_size, mean, std, True, True)),
        val=TensorImages(val_x, val_y, TensorTransform(image_size, mean, std, False, True)),
        num_classes=num_classes,
        in_chans=3,
        class_names=names,
        mean=mean,
        std=std,
    )


def load_imagefolder(spec: DataSpec, image_size: int, data_dir: Path | None,
                     normalization: Normalization | None = None) -> ImageData:
    """`path/CLASS/*.png|jpg`; or `path/train/CLASS/...` and `path/val/CLASS/...` when both exist."""
    root = _resolve(spec.path, data_dir)
    if not root.is_dir():
        raise DatasetError(f"imagefolder directory {root} not found; set data.path or --data-dir")
    mean, std = fitted(normalization, (IMAGENET_MEAN, IMAGENET_STD), 3)
    to_image = [T.ToImage(), T.RGB()]
    train_tf = T.Compose([
        *to_image, T.RandomResizedCrop(image_size, scale=(0.35, 1.0), antialias=True), T.RandomHorizontalFlip(),
        T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std),
    ])
    val_tf = T.Compose([
        *to_image, T.Resize(image_size, antialias=True), T.CenterCrop(image_size),
        T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std),
    ])
    try:
        if (root / "train").is_dir() and (root / "val").is_dir():
            train_base = tv_datasets.ImageFolder(str(root / "train"))
            val_base = tv_datasets.ImageFolder(str(root / "val"))
            if val_base.classes != train_base.classes:
                raise DatasetError(f"{root}/val has classes {val_base.classes}, {root}/train has {train_base.classes}")
            train_set: Dataset = Transformed(train_base, train_tf)
            val_set: Dataset = Transformed(val_base, val_tf)
            classes = train_base.classes
        else:
            base = tv_datasets.ImageFolder(str(root))
            train_idx, val_idx = _split(len(base), spec.validation_fraction)
            train_set = Subset(Transformed(base, train_tf), train_idx)
            val_set = Subset(Transformed(base, val_tf), val_idx)
            classes = base.classes
    except FileNotFoundError as exc:
        raise DatasetError(
            f"imagefolder {root} is malformed: {exc}. Expected one sub-directory per class holding images"
        ) from exc
    if len(classes) < 2:
        raise DatasetError(f"imagefolder {root} has {len(classes)} class folder(s); at least 2 are needed")
    return ImageData(train=train_set, val=val_set, num_classes=len(classes), in_chans=3, class_names=classes,
                     mean=mean, std=std)


def load_synthetic(spec: DataSpec, image_size: int, normalization: Normalization | None = None) -> ImageData:
    """Random images whose class sets the mean colour: learnable, for smoke tests and benchmarks."""
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    labels = torch.randint(0, spec.synthetic_classes, (spec.synthetic_samples,), generator=generator)
    palette = torch.rand(spec.synthetic_classes, 3, 1, 1, generator=generator)
    noise = torch.rand(spec.synthetic_samples, 3, image_size, image_size, generator=generator)
    images = (0.6 * palette[labels] + 0.4 * noise).mul(255).to(torch.uint8)
    train_idx, val_idx = _split(len(labels), spec.validation_fraction)
    mean, std = fitted(normalization, NORMALIZATION["synthetic"], 3)
    tf = TensorTransform(image_size, mean, std, False, False)
    return ImageData(
        train=TensorImages(images[train_idx], labels[train_idx], tf),
        val=TensorImages(images[val_idx], labels[val_idx], tf),
        num_classes=spec.synthetic_classes,
        in_chans=3,
        class_names=[f"class{i}" for i in range(spec.synthetic_classes)],
        mean=mean,
        std=std,
    )


def _resolve(path: str | None, data_dir: Path | None) -> Path:
    assert path, "data.path is required (checked by the spec)"
    candidate = Path(path).expanduser()
    if not candidate.is_absolute() and data_dir is not None:
        candidate = data_dir / candidate
    return candidate.resolve()


def dataset_location(path: str, data_dir: str | Path | None) -> str:
    """data.path as an object-store URI or an absolute local path: a relative path is resolved
    against the data directory, which may itself be an object store (--data-dir s3://...)."""
    if is_object_store(path):
        return path
    if data_dir is not None and is_object_store(str(data_dir)) and not Path(path).expanduser().is_absolute():
        return f"{str(data_dir).rstrip('/')}/{path}"
    return str(_resolve(path, Path(data_dir) if data_dir else None))


def load_data(spec: DataSpec, image_size: int, data_dir: str | Path | None = None,
              normalization: Normalization | None = None) -> ImageData:
    """The dataset, normalised as its own default says or, given, as pretrained weights were."""
    location = dataset_location(spec.path, data_dir) if spec.path and spec.dataset in FILE_DATASETS else None
    if location is not None and is_object_store(location):
        local = cached_dataset(location)
        try:
            return load_data(spec.model_copy(update={"path": str(local)}), image_size, normalization=normalization)
        except DatasetError as exc:  # its errors name the store's objects, not the cache's copies
            raise DatasetError(str(exc).replace(str(local), location)) from exc
    base_dir = Path(data_dir) if data_dir else None
    if spec.dataset == "digits":
        return load_digits(spec, image_size, normalization)
    if spec.dataset in ("cifar10", "cifar100"):
        return load_cifar(spec, image_size, base_dir, normalization)
    if spec.dataset == "imagefolder":
        return load_imagefolder(spec, image_size, base_dir, normalization)
    return load_synthetic(spec, image_size, normalization)


def dataset_shape(spec: DataSpec, data_dir: str | Path | None = None) -> tuple[int, int]:
    """(num_classes, in_chans) without building transforms twice: used to size the model."""
    data = load_data(spec, 8, data_dir)
    return data.num_classes, data.in_chans
