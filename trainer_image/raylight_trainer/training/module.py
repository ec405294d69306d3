"""Lightning module: image classification with label smoothing, AdamW groups, warmup + cosine."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC, MulticlassF1Score

from ..model import ModelConfig, create_model


def parameter_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict[str, Any]]:
    """Decay only weight matrices: norms, biases and embeddings are left alone. With layer_decay,
    timm's layer-wise groups (by the model's group_matcher: a ViT's blocks, a CNN's stages), each
    with the `lr_scale` that the schedule applies."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    if layer_decay is not None:
        from timm.optim import param_groups_layer_decay

        return param_groups_layer_decay(model, weight_decay=weight_decay, no_weight_decay_list=sorted(skip),
                                        layer_decay=layer_decay)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name in skip or name.split(".")[-1] in skip:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def classifier_names(model: nn.Module) -> tuple[str, ...]:
    """The classifier's module names (timm's pretrained_cfg says them, ours too)."""
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    return (names,) if isinstance(names, str) else tuple(names)


def split_classifier(model: nn.Module, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The groups with the classifier's parameters in groups of their own (`classifier: True`), the
    same settings otherwise: training.freezeEpochs trains those alone first."""
    prefixes = tuple(f"{name}." for name in classifier_names(model))
    head = {id(param) for name, param in model.named_parameters() if name.startswith(prefixes)}
    split = []
    for group in groups:
        for is_head in (True, False):
            params = [p for p in group["params"] if (id(p) in head) == is_head]
            if params:
                split.append({**group, "params": params, "classifier": is_head})
    return split

def compile_problem(on_gpu: bool) -> str | None:
    """Why torch.compile (its Inductor backend) cannot run here, or None when it can."""
    if on_gpu:
        try:
            import triton  # noqa: F401
        except ImportError:
            return "Triton is not installed"
        major, minor = torch.cuda.get_device_capability()
        return None if major >= 7 else f"the GPU's compute capability {major}.{minor} is below Triton's 7.0"
    if not any(shutil.which(compiler) for compiler in ("g++", "c++", "clang++")):
        return "no C++ compiler (g++, c++ or clang++) for a CPU worker"
    return None


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor: linear from ~0 to 1 over warmup, then cosine to 0 at total_steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def group_factor(group: dict[str, Any], warmup: int, total: int, frozen_steps: int) -> Callable[[int], float]:
    """A group's learning-rate factor by step: warmup + cosine over the run for the classifier; for
    the rest, 0 while frozen (training.freezeEpochs), then its own warmup + cosine over what is left."""
    if group.get("classifier") or frozen_steps == 0:
        return lambda step: warmup_cosine(step, warmup, total)
    return lambda step: 0.0 if step < frozen_steps else warmup_cosine(step - frozen_steps, warmup,
                                                                      total - frozen_steps)


def uses_channels_last(architecture: str, training: dict[str, Any], on_gpu: bool) -> bool:
    """training.channelsLast, else on for EfficientNet on a CPU only: measured there (its
    depthwise and 1x1 convolutions, 1.55-1.71x faster a step); on a GPU not measured yet."""
    asked = training.get("channels_last")
    if asked is not None:
        return bool(asked)
    return architecture == "efficientnet" and not on_gpu


class ImageClassifier(pl.LightningModule):
    def __init__(self, model: dict[str, Any], training: dict[str, Any], architecture: str = "vit",
                 class_names: list[str] | None = None, normalization: list[list[float]] | None = None) -> None:
        """model: the architecture's config fields; training: the TrainingSpec (snake_case);
        class_names: the dataset's, in label order, and normalization: the (mean, std) its images
        are normalised with (both kept in the checkpoint for the model's card)."""
        super().__init__()
        self.save_hyperparameters()
        self.net = create_model(architecture, model)
        self.class_names = list(class_names or [])
        self.normalization = normalization
        self.config: ModelConfig = self.net.cfg  # type: ignore[assignment]
        self.training_spec = training
        classes = self.config.num_classes
        # torchmetrics keeps counts (and, for AUROC, every score) per rank and gathers them
        # across DDP ranks at epoch end: the values are over the whole validation split.
        self.val_metrics = MetricCollection({
            "val_acc": MulticlassAccuracy(num_classes=classes, average="micro"),
            "val_f1": MulticlassF1Score(num_classes=classes, average="macro"),
            "val_auroc": MulticlassAUROC(num_classes=classes, average="macro"),
        })
        self.val_loss = MeanMetric()
        self.architecture, self.channels_last = architecture, False
        # (train, validation) transforms of whole batches on the device, when the loaders give uint8
        # images (data.deviceAugmentation); not a hyperparameter: checkpoints are the same either way.
        self.batch_transforms: tuple[Callable[[torch.Tensor], torch.Tensor],
                                     Callable[[torch.Tensor], torch.Tensor]] | None = None

    def setup(self, stage: str) -> None:
        on_gpu = self.trainer.accelerator.__class__.__name__ == "CUDAAccelerator"
        if uses_channels_last(self.architecture, self.training_spec, on_gpu):
            # Weights now, each batch as it arrives (on_after_batch_transfer); the state dict's
            # values are the same, so checkpoints load into either layout.
            self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            self.channels_last = True
        # Compiled for training only, in place: the state dict (checkpoints, the logged model) is
        # the uncompiled network's.
        if stage == "fit" and self.training_spec.get("compile"):
            problem = compile_problem(on_gpu=on_gpu)
            if problem is None:
                self.net.compile()
            else:
                rank_zero_warn(f"training.compile: {problem}; training without torch.compile")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        if self.batch_transforms is not None:  # data.deviceAugmentation: uint8 batches, transformed here
            train, val = self.batch_transforms
            images = (train if self.trainer.training else val)(images)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        loss = F.cross_entropy(self(images), labels, label_smoothing=self.training_spec["label_smoothing"])
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(labels))
        # The highest rate: the classifier's (with layerDecay the groups below it run slower).
        self.log("lr", max(self.lr_schedulers().get_last_lr()), on_step=False, on_epoch=True)  # type: ignore[union-attr]
        return loss

    def frozen(self) -> bool:
        """training.freezeEpochs: only the classifier trains in the first epochs."""
        return self.current_epoch < int(self.training_spec.get("freeze_epochs") or 0)

    def on_train_epoch_start(self) -> None:
        self._freeze_norms()

    def on_validation_model_train(self) -> None:
        super().on_validation_model_train()
        self._freeze_norms()

    def _freeze_norms(self) -> None:
        """While frozen, BatchNorm keeps its pretrained statistics (train mode would update them)."""
        if not self.frozen():
            return
        prefixes = tuple(f"{name}." for name in classifier_names(self.net))
        for name, module in self.net.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not f"{name}.".startswith(prefixes):
                module.eval()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # While frozen, the rest of the network gets no update at all: no gradient, so no step, no
        # weight decay and no optimizer state (DDP still reduces its gradients: every rank alike).
        if self.frozen():
            for group in optimizer.param_groups:
                if not group.get("classifier"):
                    for param in group["params"]:
                        param.grad = None

    def on_validation_epoch_start(self) -> None:
        # Without synchronised BatchNorm (CPU workers), each rank's running statistics drift
        # apart; evaluate every rank with rank 0's, the ones its checkpoint holds.
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for buffer in self.net.buffers():
                dist.broadcast(buffer, src=0)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images).float()
        self.val_loss.update(F.cross_entropy(logits, labels), weight=len(labels))
        self.val_metrics.update(logits, labels)
        self.log("val_loss", self.val_loss, batch_size=len(labels))
        self.log_dict(self.val_metrics, batch_size=len(labels))

    def on_validation_epoch_end(self) -> None:
        # Completed epochs: ASHA's time axis (Ray's own "epoch" counts from 0).
        self.log("epochs", float(self.current_epoch + 1))

    def configure_optimizers(self) -> Any:
        spec = self.training_spec
        groups = split_classifier(self.net, parameter_groups(self.net, spec["weight_decay"], spec.get("layer_decay")))
        for group in groups:  # layerDecay's scale, applied once here: the schedule's factors multiply it
            group["lr"] = spec["learning_rate"] * group.get("lr_scale", 1.0)
        if spec["optimizer"] == "sgd":
            optimizer: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=spec["learning_rate"], momentum=spec["momentum"], nesterov=True
            )
        else:
            # Fused: one kernel for all parameters instead of a loop over them; the same update
            # (bench/trial_overhead.py: 3.4 -> 1.0 ms a step for the quickstart's ViT on a CPU).
            fused = next(self.net.parameters()).device.type in ("cpu", "cuda")
            optimizer = torch.optim.AdamW(groups, lr=spec["learning_rate"], betas=(0.9, 0.999), fused=fused or None)
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        warmup = int(spec["warmup_epochs"] * per_epoch)
        frozen_steps = int(spec.get("freeze_epochs") or 0) * per_epoch
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, [group_factor(group, warmup, total, frozen_steps) for group in optimizer.param_groups])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
