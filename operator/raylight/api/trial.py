"""The spec of one training run: a TrainingJob's spec, and the template of every TuneSweep trial."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import SpecModel, server_rules
from .cluster import ClusterSpec, SecretRef

# Presets are plain data so that the operator can validate them without importing torch.
# The trainer builds its model config from this table (raylight_trainer.model.vit).
VIT_PRESETS: dict[str, dict[str, int | float]] = {
    # Test and quickstart size: trains on 2 CPU cores in seconds per epoch.
    "vit-nano": {"image_size": 16, "patch_size": 4, "dim": 64, "depth": 4, "heads": 4, "mlp_ratio": 2.0},
    # CIFAR size (32 px, 4 px patches: 64 tokens), a few million parameters.
    "vit-cifar": {"image_size": 32, "patch_size": 4, "dim": 256, "depth": 6, "heads": 8, "mlp_ratio": 2.0},
    # The ImageNet shapes of Dosovitskiy et al. / DeiT.
    "vit-tiny": {"image_size": 224, "patch_size": 16, "dim": 192, "depth": 12, "heads": 3, "mlp_ratio": 4.0},
    "vit-small": {"image_size": 224, "patch_size": 16, "dim": 384, "depth": 12, "heads": 6, "mlp_ratio": 4.0},
    "vit-base": {"image_size": 224, "patch_size": 16, "dim": 768, "depth": 12, "heads": 12, "mlp_ratio": 4.0},
}

Preset = Literal["vit-nano", "vit-cifar", "vit-tiny", "vit-small", "vit-base"]
Dataset = Literal["digits", "cifar10", "cifar100", "imagefolder", "synthetic"]
# The metrics the trainer reports every epoch; an objective must be one of them.
Metric = Literal["val_acc", "val_loss", "train_loss"]


class ModelSpec(SpecModel):
    """The network to train. Unset sizes come from the preset."""

    architecture: Literal["vit"] = "vit"
    """Model family. Only `vit` (Vision Transformer) for now."""
    preset: Preset = "vit-nano"
    """Named size; each field below overrides one of its values."""
    image_size: int | None = Field(default=None, ge=8, le=1024)
    """Input side in pixels; images are resized to it. Must be a multiple of patchSize."""
    patch_size: int | None = Field(default=None, ge=1, le=64)
    """Side of the square patches that become tokens."""
    dim: int | None = Field(default=None, ge=8, le=4096)
    """Token embedding width. Must be a multiple of heads."""
    depth: int | None = Field(default=None, ge=1, le=48)
    """Number of transformer blocks."""
    heads: int | None = Field(default=None, ge=1, le=64)
    """Attention heads per block."""
    mlp_ratio: float | None = Field(default=None, gt=0, le=16)
    """MLP hidden width as a multiple of dim."""
    dropout: float = Field(default=0.0, ge=0, lt=1)
    """Dropout after attention projection, in the MLP and on the embeddings."""
    drop_path: float = Field(default=0.0, ge=0, lt=1)
    """Stochastic depth rate of the last block (linearly increasing from 0 over blocks)."""

    def resolved(self) -> dict[str, int | float]:
        """Preset values with the overrides applied (snake_case keys)."""
        sizes = dict(VIT_PRESETS[self.preset])
        for key in sizes:
            value = getattr(self, key)
            if value is not None:
                sizes[key] = value
        return {**sizes, "dropout": self.dropout, "drop_path": self.drop_path}

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelSpec:
        sizes = self.resolved()
        if int(sizes["image_size"]) % int(sizes["patch_size"]):
            raise ValueError(
                f"imageSize {sizes['image_size']} is not a multiple of patchSize {sizes['patch_size']}; "
                "pick sizes that divide evenly"
            )
        if int(sizes["dim"]) % int(sizes["heads"]):
            raise ValueError(f"dim {sizes['dim']} is not a multiple of heads {sizes['heads']}")
        return self


class DataSpec(SpecModel):
    """Where the images come from."""

    model_config = server_rules((
        "!(self.dataset in ['cifar10', 'cifar100', 'imagefolder']) || has(self.path)",
        "this dataset reads files: set data.path to its directory",
    ))

    dataset: Dataset = "digits"
    """digits (bundled with scikit-learn), cifar10/cifar100 (python-format directory),
    imagefolder (one sub-directory per class), or synthetic (random, for smoke tests)."""
    path: str | None = None
    """Dataset directory (cifar10, cifar100, imagefolder). Relative paths are resolved
    against the runner's data directory (`--data-dir`, or the mounted volume on a cluster)."""
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)
    """Share held out for validation where the dataset has no split of its own."""
    synthetic_samples: int = Field(default=512, ge=16, le=1_000_000)
    """Number of images in the synthetic dataset."""
    synthetic_classes: int = Field(default=10, ge=2, le=1000)
    """Number of classes in the synthetic dataset."""
    loader_workers: int = Field(default=0, ge=0, le=64)
    """DataLoader worker processes per training worker (0: load in the training process)."""

    @model_validator(mode="after")
    def _check_path(self) -> DataSpec:
        if self.dataset in ("cifar10", "cifar100", "imagefolder") and not self.path:
            raise ValueError(f"dataset {self.dataset} reads files: set data.path to its directory")
        return self


class TrainingSpec(SpecModel):
    """Optimisation settings."""

    max_epochs: int = Field(default=10, ge=1, le=10_000)
    """Epochs to train; also ASHA's maxT in a sweep unless the scheduler sets one."""
    batch_size: int = Field(default=128, ge=1, le=65_536)
    """Global batch size, split evenly over the workers."""
    optimizer: Literal["adamw", "sgd"] = "adamw"
    """AdamW, or SGD with Nesterov momentum."""
    learning_rate: float = Field(default=1.0e-3, gt=0, le=10)
    """Peak learning rate, reached after warmup, then cosine-decayed to zero."""
    weight_decay: float = Field(default=0.05, ge=0, le=10)
    """Decoupled weight decay; never applied to norms, biases and embeddings."""
    momentum: float = Field(default=0.9, ge=0, lt=1)
    """SGD momentum (ignored by AdamW)."""
    warmup_epochs: float = Field(default=1.0, ge=0, le=1000)
    """Epochs of linear learning-rate warmup."""
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"
    """auto: bf16-mixed on a GPU that supports it, else 32-true."""
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    """Cross-entropy label smoothing."""
    grad_clip: float | None = Field(default=1.0, gt=0)
    """Clip the gradient norm to this value (unset: no clipping)."""
    seed: int = Field(default=0, ge=0)
    """Seed for weights, data split, shuffling and augmentation."""


class ResourcesSpec(SpecModel):
    """What one training run asks of the Ray cluster."""

    model_config = server_rules(
        (
            "self.workers == 1 || self.gpusPerWorker == 0.0 || self.gpusPerWorker >= 1.0",
            "a fraction of a GPU is only for a single worker: set workers to 1 or gpusPerWorker to a whole number",
        ),
        (
            "self.gpusPerWorker <= 1.0 || double(int(self.gpusPerWorker)) == self.gpusPerWorker",
            "gpusPerWorker above 1 must be a whole number",
        ),
    )

    workers: int = Field(default=1, ge=1, le=1024)
    """Data-parallel training workers (DDP ranks)."""
    gpus_per_worker: float = Field(default=0, ge=0, le=16)
    """GPUs per worker. A fraction (e.g. 0.25) lets several single-worker trials share a GPU."""
    cpus_per_worker: float = Field(default=1, gt=0, le=512)
    """CPUs per worker."""

    @model_validator(mode="after")
    def _check_gpus(self) -> ResourcesSpec:
        fractional = 0 < self.gpus_per_worker < 1
        if fractional and self.workers > 1:
            raise ValueError(
                f"gpusPerWorker {self.gpus_per_worker} is a fraction of a GPU, which only a single worker "
                "may use (DDP ranks need a GPU each): set workers to 1 or gpusPerWorker to a whole number"
            )
        if self.gpus_per_worker > 1 and self.gpus_per_worker != int(self.gpus_per_worker):
            raise ValueError(f"gpusPerWorker {self.gpus_per_worker} above 1 must be a whole number")
        return self


class FaultToleranceSpec(SpecModel):
    """Checkpointing and retries."""

    max_failures: int = Field(default=2, ge=0, le=100)
    """Times a run restarts from its last checkpoint after a worker failure."""
    checkpoints_to_keep: int = Field(default=2, ge=1, le=100)
    """Checkpoints kept per run (the best by the objective are kept)."""


class MlflowSpec(SpecModel):
    """Experiment tracking."""

    experiment: str | None = Field(default=None, min_length=1, max_length=256)
    """MLflow experiment name (default: the resource's name)."""
    registered_model_name: str = Field(default="", max_length=256)
    """Register the best model under this name in the MLflow model registry (empty: do not register)."""
    tracking_uri: str | None = Field(default=None, min_length=1, max_length=2048)
    """MLflow tracking URI (on a cluster, default: the operator's). `raylight run --tracking-uri` overrides it."""
    secret_ref: SecretRef | None = None
    """Secret whose keys become environment variables of the run's pods, for MLflow credentials
    (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN). Never put them in the spec."""


class TrialSpec(SpecModel):
    """One training run: model, data, optimisation and resources."""

    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    fault_tolerance: FaultToleranceSpec = Field(default_factory=FaultToleranceSpec)


class TrainingJobSpec(TrialSpec):
    """A single distributed training run."""

    objective: ObjectiveSpec = Field(default_factory=lambda: ObjectiveSpec())
    """The metric that picks the best checkpoint."""
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec)
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    suspend: bool = False
    """On a cluster: true stops the run and frees its pods and GPUs; false resumes it from its checkpoints."""


class ObjectiveSpec(SpecModel):
    """The metric to optimise."""

    model_config = server_rules((
        "self.metric.endsWith('acc') == (self.mode == 'max')",
        "accuracy metrics are maximised and losses minimised: set mode to match the metric",
    ))

    metric: Metric = "val_acc"
    """One of the metrics the trainer reports each epoch."""
    mode: Literal["max", "min"] = "max"
    """Whether larger (max) or smaller (min) is better."""

    @model_validator(mode="after")
    def _check_direction(self) -> ObjectiveSpec:
        natural = "max" if self.metric.endswith("acc") else "min"
        if self.mode != natural:
            raise ValueError(f"metric {self.metric} is better when it is {natural}imised: set mode to {natural}")
        return self


TrainingJobSpec.model_rebuild()
