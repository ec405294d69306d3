"""The spec of one training run: a TrainingJob's spec, and the template of every TuneSweep trial."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from .base import FieldProblem, SpecModel, server_rules
from .cluster import ClusterSpec, SecretRef

# Presets are plain data so that the operator can validate them without importing torch.
# The trainer builds its model configs from these tables (raylight_trainer.model).
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
EFFICIENTNET_PRESETS: dict[str, dict[str, int | float]] = {
    # EfficientNet-B0 (Tan & Le, 2019): 224 px, total stride 32.
    "efficientnet-b0": {"image_size": 224, "width_multiplier": 1.0, "depth_multiplier": 1.0, "stem_stride": 2},
    # For 32 px images: a stride-1 stem keeps a 2x2 map at the end, half the width and depth.
    "efficientnet-cifar": {"image_size": 32, "width_multiplier": 0.5, "depth_multiplier": 0.5, "stem_stride": 1},
}
DEFAULT_PRESET = {"vit": "vit-nano", "efficientnet": "efficientnet-cifar"}

Architecture = Literal["vit", "efficientnet", "timm"]
Preset = Literal["vit-nano", "vit-cifar", "vit-tiny", "vit-small", "vit-base", "efficientnet-b0", "efficientnet-cifar"]
Dataset = Literal["digits", "cifar10", "cifar100", "imagefolder", "synthetic"]
# The metrics the trainer reports every epoch; an objective must be one of them.
Metric = Literal["val_acc", "val_f1", "val_auroc", "val_loss", "train_loss"]
# Fields that size only one architecture; setting one for the other is an error.
_VIT_ONLY = ("patch_size", "dim", "depth", "heads", "mlp_ratio")
_EFFICIENTNET_ONLY = ("width_multiplier", "depth_multiplier")
# A timm model is sized by its name: our presets' fields do not apply to it.
_NOT_TIMM = ("preset", *_VIT_ONLY, "fused_mlp", *_EFFICIENTNET_ONLY)

# The shapes spec.model.pretrained may take (checked here and by the API server; the trainer checks
# that the weights are there). A value with a scheme must be one of these; anything else is a path.
PRETRAINED_OBJECT_STORE = r"^(s3|gs)://[^/]+/.*[^/]$"
# models:/m-ID: MLflow 3's id of a logged model, the URI a run that registers nothing gets.
PRETRAINED_MLFLOW_MODEL = r"^models:/(m-[0-9a-f]+|[^/@]+(/[0-9]+|/latest|@[A-Za-z0-9_-]+))$"
PRETRAINED_MLFLOW_RUN = r"^runs:/[0-9A-Za-z]+/[^ ]+$"
PRETRAINED_TIMM = r"^timm:[a-z0-9_]+(\.[A-Za-z0-9_-]+)?$"
_SCHEME = r"^[A-Za-z][A-Za-z0-9+.-]*:"
TIMM_NAME = r"^[a-z0-9_]+$"
PRETRAINED_FORMS = ("a path (absolute, or relative to the data directory), s3://BUCKET/KEY, gs://BUCKET/KEY, "
                    "models:/NAME/VERSION (or models:/NAME@ALIAS, or a logged model's models:/m-ID), "
                    "runs:/RUN_ID/model, or timm:NAME[.TAG]")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _cel_matches(pattern: str) -> str:
    return "self.pretrained.matches('" + pattern.replace("\\", "\\\\") + "')"


class ModelSpec(SpecModel):
    """The network to train. Unset sizes come from the preset."""

    model_config = server_rules(
        (
            "self.architecture == 'timm' || !has(self.preset) || self.preset.startsWith(self.architecture + '-')",
            "preset does not fit architecture: vit-* presets go with vit, efficientnet-* with efficientnet",
        ),
        (
            "self.architecture == 'vit' || (!has(self.patchSize) && !has(self.dim) && !has(self.depth)"
            " && !has(self.heads) && !has(self.mlpRatio) && !(has(self.fusedMlp) && self.fusedMlp))",
            "patchSize, dim, depth, heads, mlpRatio and fusedMlp are ViT fields: remove them for this architecture",
        ),
        (
            "self.architecture == 'efficientnet' || (!has(self.widthMultiplier) && !has(self.depthMultiplier))",
            "widthMultiplier and depthMultiplier are EfficientNet fields: remove them for this architecture",
        ),
        (
            "self.architecture != 'timm' || !has(self.preset)",
            "presets size vit and efficientnet: a timm model is sized by its name; remove preset",
        ),
        (
            "self.architecture == 'timm' ? (has(self.name) || (has(self.pretrained)"
            " && self.pretrained.startsWith('timm:'))) : !has(self.name)",
            "name is timm's model name: set it with architecture timm (e.g. resnet18), and only then",
            ".name",
        ),
        (
            "!has(self.pretrained) || !self.pretrained.matches('" + _SCHEME + "') || "
            + " || ".join(_cel_matches(p) for p in (PRETRAINED_OBJECT_STORE, PRETRAINED_MLFLOW_MODEL,
                                                      PRETRAINED_MLFLOW_RUN, PRETRAINED_TIMM)),
            "pretrained must be " + PRETRAINED_FORMS,
            ".pretrained",
        ),
    )

    architecture: Architecture = "vit"
    """Model family: `vit` (Vision Transformer), `efficientnet` (MBConv blocks with
    squeeze-and-excitation), or `timm`: any model of the timm library, named by `name`."""
    name: str | None = Field(default=None, min_length=1, max_length=128, pattern=TIMM_NAME)
    """timm: the model's name, one `timm.list_models()` knows (e.g. resnet18, convnext_atto,
    vit_small_patch16_224), without a pretrained tag. Default: the name in `pretrained: timm:NAME.TAG`."""
    pretrained: str | None = Field(default=None, min_length=1, max_length=2048)
    """Weights to start from instead of random ones: a file (safetensors, a torch state dict `.pth` /
    `.bin` with timm's key names, or a Raylight checkpoint), as a path (absolute, or relative to the
    data directory like data.path), an object-store URI (s3://BUCKET/KEY, gs://BUCKET/KEY); a model
    Raylight logged to MLflow (models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/model); or a
    Hugging Face hub checkpoint by its timm name (timm:vit_small_patch16_224.augreg_in21k, where the
    pods reach the hub). Fetched once per pod. A classifier of another class count is re-initialised,
    position embeddings are resampled to the image size and the input convolution adapted to the
    images' channels; every other tensor must match. Images are then normalised as the checkpoint's
    were (its mean and std), where it says."""
    preset: Preset | None = None
    """Named size; each field below overrides one of its values (default: vit-nano, or efficientnet-cifar).
    vit-* presets go with architecture vit, efficientnet-* with efficientnet."""
    image_size: int | None = Field(default=None, ge=8, le=1024)
    """Input side in pixels; images are resized to it. For a ViT, a multiple of patchSize."""
    patch_size: int | None = Field(default=None, ge=1, le=64)
    """ViT: side of the square patches that become tokens."""
    dim: int | None = Field(default=None, ge=8, le=4096)
    """ViT: token embedding width. Must be a multiple of heads."""
    depth: int | None = Field(default=None, ge=1, le=48)
    """ViT: number of transformer blocks."""
    heads: int | None = Field(default=None, ge=1, le=64)
    """ViT: attention heads per block."""
    mlp_ratio: float | None = Field(default=None, gt=0, le=16)
    """ViT: MLP hidden width as a multiple of dim."""
    fused_mlp: bool = False
    """ViT: compute the MLP's bias + GELU as one fused op with its own backward (a Triton kernel on
    CUDA); saves activation memory and a kernel launch per block."""
    width_multiplier: float | None = Field(default=None, ge=0.1, le=8)
    """EfficientNet: channel multiplier of every stage (rounded to multiples of 8)."""
    depth_multiplier: float | None = Field(default=None, ge=0.1, le=8)
    """EfficientNet: block-count multiplier of every stage (rounded up)."""
    dropout: float = Field(default=0.0, ge=0, lt=1)
    """ViT: dropout after attention projection, in the MLP and on the embeddings.
    EfficientNet: dropout before the classifier."""
    drop_path: float = Field(default=0.0, ge=0, lt=1)
    """Stochastic depth rate of the last block (linearly increasing from 0 over blocks)."""

    def preset_name(self) -> str:
        return self.preset or DEFAULT_PRESET.get(self.architecture, "")

    def timm_name(self) -> str:
        """architecture timm: the model's name (`name`, else the one in `pretrained: timm:NAME.TAG`)."""
        if self.name:
            return self.name
        hub = (self.pretrained or "").removeprefix("timm:")
        return hub.split(".")[0]

    def resolved(self) -> dict[str, int | float]:
        """Preset values with the overrides applied (snake_case keys). A timm model's sizes are its
        name's: only the image size (when set) and the regularisation are ours."""
        if self.architecture == "timm":
            sized = {"image_size": self.image_size} if self.image_size else {}
            return {**sized, "dropout": self.dropout, "drop_path": self.drop_path}
        presets = VIT_PRESETS if self.architecture == "vit" else EFFICIENTNET_PRESETS
        sizes = dict(presets[self.preset_name()])
        for key in sizes:
            value = getattr(self, key, None)
            if value is not None:
                sizes[key] = value
        extra: dict[str, int | float] = {"dropout": self.dropout, "drop_path": self.drop_path}
        if self.architecture == "vit":
            extra["fused_mlp"] = self.fused_mlp
        return {**sizes, **extra}

    @model_validator(mode="after")
    def _check_pretrained(self) -> ModelSpec:
        value = self.pretrained
        if value is None or not re.match(_SCHEME, value):
            return self
        forms = (PRETRAINED_OBJECT_STORE, PRETRAINED_MLFLOW_MODEL, PRETRAINED_MLFLOW_RUN, PRETRAINED_TIMM)
        if not any(re.match(form, value) for form in forms):
            raise FieldProblem("pretrained", f"pretrained {value!r} is not a form Raylight reads: give "
                               f"{PRETRAINED_FORMS}")
        return self

    @model_validator(mode="after")
    def _check_timm(self) -> ModelSpec:
        if self.architecture != "timm":
            if self.name is not None:
                raise FieldProblem("name", f"name {self.name!r} names a timm model: set architecture to timm, "
                                   f"or remove name for {self.architecture}")
            return self
        misplaced = [_camel(field) for field in _NOT_TIMM if getattr(self, field) not in (None, False)]
        if misplaced:
            raise ValueError(f"{', '.join(misplaced)} {'does' if len(misplaced) == 1 else 'do'} not apply to "
                             "architecture timm: remove it; a timm model is sized by its name (and imageSize)")
        if not self.timm_name():
            raise FieldProblem("name", "architecture timm needs the model's name: set name (e.g. resnet18), "
                               "or pretrained: timm:NAME.TAG")
        if not re.match(TIMM_NAME, self.timm_name()):
            raise FieldProblem("pretrained", f"pretrained {self.pretrained!r} does not name a timm model: "
                               "give timm:NAME[.TAG]")
        return self

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelSpec:
        if self.architecture == "timm":
            return self
        presets = VIT_PRESETS if self.architecture == "vit" else EFFICIENTNET_PRESETS
        if self.preset_name() not in presets:
            raise ValueError(
                f"preset {self.preset} does not fit architecture {self.architecture}: "
                f"use one of {', '.join(presets)}"
            )
        foreign = _EFFICIENTNET_ONLY if self.architecture == "vit" else (*_VIT_ONLY, "fused_mlp")
        misplaced = [_camel(name) for name in foreign if getattr(self, name) not in (None, False)]
        if misplaced:
            sized_by = "patchSize, dim, depth, heads, mlpRatio" if self.architecture == "vit" \
                else "widthMultiplier, depthMultiplier"
            verb = "does" if len(misplaced) == 1 else "do"
            raise ValueError(
                f"{', '.join(misplaced)} {verb} not apply to architecture {self.architecture}: "
                f"remove it; {self.architecture} is sized by imageSize, {sized_by}"
            )
        if self.architecture != "vit":
            return self
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
    loader_workers: int | None = Field(default=None, ge=0, le=64)
    """DataLoader worker processes per training worker; 0 loads in the training process (default:
    the worker's whole CPUs, resources.cpusPerWorker, less the one that trains, at most 8)."""
    device_augmentation: bool = False
    """Resize, shift, flip and normalise whole batches on the training device (the GPU) instead of
    image by image in the loaders, which then only gather uint8 images (a quarter of the bytes to
    copy). For datasets held in memory (digits, cifar10, cifar100, synthetic); ImageFolder decodes
    files and keeps its transforms in the loaders. Off until the GPU check (bench/gpu) shows it wins."""

    @model_validator(mode="after")
    def _check_path(self) -> DataSpec:
        if self.dataset in ("cifar10", "cifar100", "imagefolder") and not self.path:
            raise ValueError(f"dataset {self.dataset} reads files: set data.path to its directory")
        return self


class TrainingSpec(SpecModel):
    """Optimisation settings."""

    model_config = server_rules(
        (
            "!has(self.freezeEpochs) || self.freezeEpochs == 0 || self.freezeEpochs < self.maxEpochs",
            "freezeEpochs leaves no epoch to train the whole network: make it smaller than maxEpochs",
            ".freezeEpochs",
        ),
    )

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
    compile: bool = False
    """torch.compile the model for training: faster steps after a compile of tens of seconds per
    worker (the same weights and checkpoints). Where it cannot run (no C++ compiler for a CPU
    worker, no Triton or an old GPU) the worker says why and trains without it."""
    channels_last: bool | None = None
    """Train convolutions on channels-last (NHWC) tensors: the same results, a different memory
    layout. Default: on for EfficientNet on a CPU (1.55-1.71x faster steps there,
    bench/channels_last.py), off otherwise until the GPU check (bench/gpu) measures it on a GPU."""
    seed: int = Field(default=0, ge=0)
    """Seed for weights, data split, shuffling and augmentation."""
    layer_decay: float | None = Field(default=None, gt=0, le=1)
    """Layer-wise learning-rate decay, the fine-tuning recipe of BEiT and DeiT III: the classifier
    trains at learningRate, each layer group below it (a ViT's blocks, then its embeddings; a CNN's
    blocks, then its stem) at layerDecay times the rate of the one above (0.65 to 0.75 is usual for
    a 12-block ViT). Unset: every parameter at learningRate."""
    freeze_epochs: int = Field(default=0, ge=0, le=10_000)
    """Epochs that train the classifier alone (the rest of the network at learning rate 0, its
    BatchNorm statistics frozen) before everything trains: a new head first, so that its random
    start does not push large gradients into pretrained weights."""

    @model_validator(mode="after")
    def _check_freeze(self) -> TrainingSpec:
        if self.freeze_epochs >= self.max_epochs:
            raise FieldProblem("freezeEpochs", f"freezeEpochs {self.freeze_epochs} leaves no epoch to train "
                               f"the whole network in maxEpochs {self.max_epochs}: make it smaller than maxEpochs")
        return self


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
    """Checkpoints kept per run: the top k by the objective (the best one becomes the logged model)."""


class EarlyStoppingSpec(SpecModel):
    """Stop a run once the objective has not improved for `patience` epochs (Lightning EarlyStopping)."""

    patience: int = Field(default=3, ge=1, le=10_000)
    """Epochs without improvement before training stops."""
    min_delta: float = Field(default=0.0, ge=0)
    """Smallest change of the objective that counts as an improvement."""


class LrMonitorSpec(SpecModel):
    """The learning-rate curve in the tracker (metric `lr`)."""

    interval: Literal["epoch", "step"] = "epoch"
    """One point per epoch, or one per optimiser step (shows the warmup in detail)."""


class CallbacksSpec(SpecModel):
    """Training callbacks. The top-k checkpoints by the objective are faultTolerance.checkpointsToKeep."""

    early_stopping: EarlyStoppingSpec | None = None
    """Stop when the objective stalls (unset: train maxEpochs). Not in an ASHA sweep: ASHA decides there."""
    lr_monitor: LrMonitorSpec = Field(default_factory=LrMonitorSpec)


class InterpretabilitySpec(SpecModel):
    """Integrated-gradients pictures (Captum) of validation images, logged to the MLflow run as a PNG."""

    enabled: bool = True
    """Make the picture after training (for a sweep: for the best trial)."""
    all_trials: bool = False
    """In a sweep, also for every other trial that finished (each to its own child run)."""
    samples_per_class: int = Field(default=2, ge=1, le=16)
    """Validation images per class (the first ones of the split)."""
    max_classes: int = Field(default=10, ge=1, le=100)
    """Classes shown (the first ones), so that a 100-class dataset still gives a readable picture."""
    steps: int = Field(default=32, ge=2, le=1024)
    """Integration steps (Riemann trapezoid) between baseline and image."""
    baseline: Literal["black", "zeros", "blur"] = "black"
    """Reference input: black pixels (the original paper's), zeros (the dataset's mean colour after
    normalisation), or a blurred copy of the image."""


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


class WandbSpec(SpecModel):
    """Weights & Biases as a second tracker (MLflow stays the record the status and models come from)."""

    project: str = Field(min_length=1, max_length=128)
    """W&B project."""
    entity: str | None = Field(default=None, min_length=1, max_length=128)
    """W&B team or user (default: the API key's)."""
    mode: Literal["online", "offline"] = "offline"
    """offline writes runs under the run's storage path (sync them later with `wandb sync`);
    online needs WANDB_API_KEY from secretRef."""
    secret_ref: SecretRef | None = None
    """Secret whose keys become environment variables of the run's pods (WANDB_API_KEY)."""


class TrackingSpec(SpecModel):
    """Extra experiment trackers besides MLflow."""

    wandb: WandbSpec | None = None


class TrialSpec(SpecModel):
    """One training run: model, data, optimisation and resources."""

    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    fault_tolerance: FaultToleranceSpec = Field(default_factory=FaultToleranceSpec)
    callbacks: CallbacksSpec = Field(default_factory=CallbacksSpec)
    interpretability: InterpretabilitySpec = Field(default_factory=InterpretabilitySpec)


class TrainingJobSpec(TrialSpec):
    """A single distributed training run."""

    objective: ObjectiveSpec = Field(default_factory=lambda: ObjectiveSpec())
    """The metric that picks the best checkpoint."""
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    suspend: bool = False
    """On a cluster: true stops the run and frees its pods and GPUs; false resumes it from its checkpoints."""


class ObjectiveSpec(SpecModel):
    """The metric to optimise."""

    model_config = server_rules((
        "self.metric.endsWith('loss') == (self.mode == 'min')",
        "losses are minimised and accuracy, F1 and AUROC maximised: set mode to match the metric",
    ))

    metric: Metric = "val_acc"
    """One of the metrics the trainer reports each epoch: val_acc, val_f1 (macro F1), val_auroc
    (one-vs-rest, macro), val_loss, train_loss. Validation metrics cover the whole validation set."""
    mode: Literal["max", "min"] = "max"
    """Whether larger (max) or smaller (min) is better."""

    @model_validator(mode="after")
    def _check_direction(self) -> ObjectiveSpec:
        natural = "min" if self.metric.endswith("loss") else "max"
        if self.mode != natural:
            raise ValueError(f"metric {self.metric} is better when it is {natural}imised: set mode to {natural}")
        return self


TrainingJobSpec.model_rebuild()
