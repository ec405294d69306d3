"""Integrated-gradients pictures (Captum) of a trained model on validation images.

For the first `samplesPerClass` validation images of each of the first `maxClasses` classes:
the image, and a heat map of |attribution| summed over channels, titled with the true and the
predicted label. The PNG goes to the MLflow run as `attributions/integrated_gradients.png`.
"""

from __future__ import annotations

import copy
import io
import logging
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raylight.api import InterpretabilitySpec, TrialSpec

from ..data.datasets import ImageData, load_data
from ..runtime.placement import ray_cluster_address
from .mlflow_runs import root_cause

log = logging.getLogger(__name__)
ARTIFACT_DIR = "attributions"
ARTIFACT_NAME = "integrated_gradients.png"


def pick_samples(data: ImageData, spec: InterpretabilitySpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) in class order: the first samples of each shown class, in split order."""
    wanted = {c: spec.samples_per_class for c in range(min(spec.max_classes, data.num_classes))}
    picked: dict[int, list[torch.Tensor]] = {c: [] for c in wanted}
    for index in range(len(data.val)):  # type: ignore[arg-type]
        image, label = data.val[index]
        if wanted.get(label, 0) > 0:
            picked[label].append(image)
            wanted[label] -= 1
            if not any(wanted.values()):
                break
    images = [image for c in picked for image in picked[c]]
    labels = [c for c in picked for _ in picked[c]]
    if not images:
        raise ValueError("the validation split has no images of the classes to show")
    return torch.stack(images), torch.tensor(labels)


def baseline_for(images: torch.Tensor, kind: str, data: ImageData) -> torch.Tensor:
    """The reference input IG integrates from, in the model's (normalised) input space."""
    if kind == "zeros":
        return torch.zeros_like(images)  # the dataset's mean colour
    if kind == "black":
        mean = torch.tensor(data.mean).view(1, -1, 1, 1)
        std = torch.tensor(data.std).view(1, -1, 1, 1)
        return ((0.0 - mean) / std).expand_as(images).contiguous()
    from torchvision.transforms.v2.functional import gaussian_blur

    side = images.shape[-1]
    kernel = max(3, (side // 4) | 1)  # odd, about a quarter of the image
    return gaussian_blur(images, [kernel, kernel], [side / 8.0, side / 8.0])


def integrated_gradients(model: nn.Module, images: torch.Tensor, baseline: torch.Tensor, targets: torch.Tensor,
                         steps: int) -> torch.Tensor:
    from captum.attr import IntegratedGradients

    # Captum batches the path points with the images: keep each forward to a few hundred images.
    internal = max(1, 256 // max(1, len(images))) * len(images)
    attributions = IntegratedGradients(model).attribute(
        images, baselines=baseline, target=targets, n_steps=steps, internal_batch_size=internal,
    )
    return attributions.detach()


def render(images: torch.Tensor, heat: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor,
           data: ImageData) -> bytes:
    """A PNG: per class a column, per sample an image row and a heat-map row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean = torch.tensor(data.mean).view(-1, 1, 1)
    std = torch.tensor(data.std).view(-1, 1, 1)
    classes = sorted(set(labels.tolist()))
    per_class = max(int((labels == c).sum()) for c in classes)
    fig, axes = plt.subplots(2 * per_class, len(classes), figsize=(1.6 * len(classes), 3.3 * per_class),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for column, cls in enumerate(classes):
        for row, index in enumerate((labels == cls).nonzero().flatten().tolist()):
            shown = (images[index] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
            image_ax, heat_ax = axes[2 * row, column], axes[2 * row + 1, column]
            image_ax.imshow(shown.squeeze(-1) if shown.shape[-1] == 1 else shown, cmap="gray")
            good = int(predicted[index]) == cls
            image_ax.set_title(f"true {_name(data, cls)}\npred {_name(data, int(predicted[index]))}",
                               fontsize=7, color="darkgreen" if good else "darkred")
            heat_ax.imshow(heat[index].numpy(), cmap="inferno")
    fig.suptitle("Integrated gradients (|attribution| summed over channels)", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _name(data: ImageData, cls: int) -> str:
    return data.class_names[cls][:12] if cls < len(data.class_names) else str(cls)


def attribution_png(model: nn.Module, data: ImageData, spec: InterpretabilitySpec) -> bytes:
    model = model.eval()
    device = next(model.parameters()).device
    images, labels = pick_samples(data, spec)
    images = images.to(device)
    with torch.no_grad():
        predicted = model(images).argmax(-1)
    baseline = baseline_for(images.cpu(), spec.baseline, data).to(device)
    # Attributions explain the prediction: which pixels moved the model towards what it said.
    attributions = integrated_gradients(model, images, baseline, predicted, spec.steps)
    heat = attributions.abs().sum(1).cpu()
    heat = heat / heat.flatten(1).quantile(0.99, dim=1).clamp_min(1e-12).view(-1, 1, 1)
    return render(images.cpu(), heat.clamp(0, 1), labels, predicted.cpu(), data)


def log_attributions(model: nn.Module, trial: dict[str, Any], data_dir: str | None, tracking_uri: str,
                     run_id: str) -> str:
    """Compute the picture and log it to the run; returns the artifact path."""
    from mlflow.tracking import MlflowClient

    spec = TrialSpec.model_validate(trial)
    # The images as the model was trained on them: normalised as it was (pretrained weights' own).
    cfg: Any = model.cfg
    data = load_data(spec.data, int(cfg.image_size), data_dir, getattr(model, "normalization", None))
    if torch.cuda.is_available():
        model = model.cuda()
    png = attribution_png(model, data, spec.interpretability)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ARTIFACT_NAME
        path.write_bytes(png)
        MlflowClient(tracking_uri).log_artifact(run_id, str(path), ARTIFACT_DIR)
    return f"{ARTIFACT_DIR}/{ARTIFACT_NAME}"


class PendingAttributions:
    """log_attributions started before the model is logged, so the two overlap.

    A local run's driver has the data and the devices: it computes the picture in a thread (torch
    and MLflow are loaded there already; a new process spent seconds importing them again). On a
    cluster the driver (the head pod) may have neither the data volume nor a GPU: there it runs as
    a Ray task shaped like one training worker."""

    def __init__(self, model: nn.Module, spec: TrialSpec, data_dir: str | None, tracking_uri: str,
                 run_id: str) -> None:
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.ref: Any = None
        self.future: Future[str] | None = None
        if not ray_cluster_address():
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raylight-attributions")
            # A copy: the driver goes on exporting the model while the thread runs it.
            self.future = pool.submit(log_attributions, copy.deepcopy(model).cpu(), spec.wire(), data_dir,
                                      tracking_uri, run_id)
            pool.shutdown(wait=False)
            return
        import ray

        gpus = min(1.0, spec.resources.gpus_per_worker)
        task = ray.remote(log_attributions).options(num_cpus=min(1.0, spec.resources.cpus_per_worker),
                                                    num_gpus=gpus)
        self.ref = task.remote(model.cpu(), spec.wire(), data_dir, tracking_uri, run_id)

    def artifact(self) -> str | None:
        """The picture's artifact path; a failure is logged and tagged, never raised: the run
        itself succeeded."""
        import ray
        from mlflow.tracking import MlflowClient

        try:
            return str(self.future.result() if self.future is not None else ray.get(self.ref))
        except Exception as exc:  # Ray wraps the task's error
            message = root_cause(exc)
            log.warning("integrated gradients failed for run %s: %s", self.run_id, message)
            MlflowClient(self.tracking_uri).set_tag(self.run_id, "raylight.attributions_error", message[:5000])
            return None

