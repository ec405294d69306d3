"""What a run does with its network, for each kind of network a spec can name: our ViT, our
EfficientNet, and timm's resnet18 and ViT-Ti/16 (at a small image size). Forward and backward,
the Lightning module's checkpoint round trip and metrics, the logged model (torch.export, or the
weights-only fallback where export fails), integrated gradients, layer decay and freezing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from raylight.api import InterpretabilitySpec, ModelSpec, TrainingSpec
from raylight.api.tags import TAG_MODEL_FORMAT
from raylight_trainer.data.datasets import ImageData
from raylight_trainer.model import config_from_spec, spec_image_size
from raylight_trainer.model.pretrained import check_pretrained, load_into, read_checkpoint
from raylight_trainer.training.module import ImageClassifier, classifier_names, parameter_groups

CLASSES, CHANS = 4, 1
MODELS: dict[str, dict[str, Any]] = {
    "vit": {"architecture": "vit", "preset": "vit-nano", "depth": 2},
    "efficientnet": {"architecture": "efficientnet", "preset": "efficientnet-cifar", "imageSize": 16,
                     "widthMultiplier": 0.25},
    "timm-resnet18": {"architecture": "timm", "name": "resnet18", "imageSize": 32},
    "timm-vit-tiny": {"architecture": "timm", "name": "vit_tiny_patch16_224", "imageSize": 32},
}


def classifier(kind: str, **training: Any) -> ImageClassifier:
    spec = ModelSpec.model_validate(MODELS[kind])
    cfg = config_from_spec(spec, num_classes=CLASSES, in_chans=CHANS)
    train = TrainingSpec.model_validate({"maxEpochs": 2, "batchSize": 8, **training}).model_dump()
    torch.manual_seed(0)
    return ImageClassifier(model=cfg.as_dict(), training=train, architecture=spec.architecture,
                           class_names=[f"c{i}" for i in range(CLASSES)], normalization=[[0.5], [0.25]])


def images(kind: str, count: int = 8) -> torch.Tensor:
    side = spec_image_size(ModelSpec.model_validate(MODELS[kind]))
    return torch.randn(count, CHANS, side, side, generator=torch.Generator().manual_seed(1))


@pytest.fixture(params=list(MODELS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_forward_gives_a_logit_per_class_and_gradients_reach_every_parameter(kind: str) -> None:
    module = classifier(kind)
    batch = images(kind)
    features = module.net.forward_features(batch)
    logits = module.net.forward_head(features)
    assert logits.shape == (len(batch), CLASSES)
    torch.testing.assert_close(module(batch), logits)
    torch.nn.functional.cross_entropy(logits, torch.arange(len(batch)) % CLASSES).backward()
    # Every parameter is in the graph; the input layer's gradient is not zero. (A timm ResNet's
    # blocks start with their last BatchNorm's weight at zero, so their branch gets zero at first.)
    silent = [name for name, p in module.net.named_parameters() if p.grad is None]
    assert not silent, f"no gradient reaches {silent[:5]}"
    first_conv = module.net.get_parameter(module.net.pretrained_cfg["first_conv"] + ".weight")
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0


def fit(module: ImageClassifier, kind: str, tmp_path: Path, epochs: int = 1) -> pl.Trainer:
    batch = images(kind, 16)
    labels = torch.arange(16) % CLASSES
    loader = DataLoader(TensorDataset(batch, labels), batch_size=8)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, loader, loader)
    return trainer


def test_the_lightning_module_trains_reports_its_metrics_and_restores_from_its_checkpoint(
        kind: str, tmp_path: Path) -> None:
    module = classifier(kind)
    trainer = fit(module, kind, tmp_path)
    metrics = trainer.callback_metrics
    for name in ("val_acc", "val_f1", "val_auroc", "val_loss", "train_loss", "lr"):
        assert name in metrics and torch.isfinite(metrics[name]), name
    assert 0 <= float(metrics["val_acc"]) <= 1 and 0 <= float(metrics["val_auroc"]) <= 1
    from ray.train import Checkpoint as RayCheckpoint

    from raylight_trainer.training.workers import CHECKPOINT_FILE, saved_normalization

    (tmp_path / "ray").mkdir()
    trainer.save_checkpoint(tmp_path / "ray" / CHECKPOINT_FILE)
    # A resumed run normalises its images as its checkpoint says, without the weights it started from.
    assert saved_normalization(RayCheckpoint.from_directory(str(tmp_path / "ray"))) == ((0.5,), (0.25,))
    restored = ImageClassifier.load_from_checkpoint(tmp_path / "ray" / CHECKPOINT_FILE, map_location="cpu")
    assert restored.normalization == [[0.5], [0.25]] and restored.architecture == module.architecture
    batch = images(kind)
    with torch.no_grad():
        torch.testing.assert_close(restored.eval()(batch), module.eval()(batch))


def test_the_logged_model_predicts_as_the_network_and_carries_weights_that_load_back(
        kind: str, tmp_path: Path) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    from raylight_trainer.tracking.mlflow_runs import log_model
    from raylight_trainer.training.workers import model_card

    module = classifier(kind)
    network = module.net.eval()
    setattr(network, "normalization", module.normalization)  # noqa: B010
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("zoo", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    batch = images(kind)
    logged = log_model(uri, run_id, network, tuple(batch.shape[1:]), "", model_card(network, "digits"))
    assert client.get_run(run_id).data.tags[TAG_MODEL_FORMAT] == "pt2", "torch.export failed for it"
    mlflow.set_tracking_uri(uri)
    with torch.no_grad():
        torch.testing.assert_close(mlflow.pytorch.load_model(logged)(batch), network(batch), atol=1e-5, rtol=1e-4)
    # The weights it carries (MODEL_WEIGHTS_FILE), read as spec.model.pretrained reads them.
    # An unregistered model's URI is models:/m-ID (MLflow 3's logged model): the driver's check and
    # the read both take it.
    assert logged.startswith("models:/m-")
    check_pretrained(logged, None, uri)
    fresh = classifier(kind).net.eval()
    assert load_into(fresh, read_checkpoint(logged, tracking_uri=uri)).endswith("every tensor as it was")
    with torch.no_grad():
        torch.testing.assert_close(fresh(batch), network(batch))


def test_integrated_gradients_explain_its_predictions(kind: str) -> None:
    from raylight_trainer.tracking.attributions import attribution_png, integrated_gradients

    network = classifier(kind).net.eval()
    batch = images(kind, 8)
    samples = list(zip(batch, (torch.arange(8) % CLASSES).tolist(), strict=True))
    data = ImageData(train=samples, val=samples, num_classes=CLASSES, in_chans=CHANS,  # type: ignore[arg-type]
                     class_names=[f"c{i}" for i in range(CLASSES)], mean=(0.5,), std=(0.25,))
    png = attribution_png(network, data, InterpretabilitySpec.model_validate(
        {"samplesPerClass": 1, "maxClasses": 2, "steps": 4}))
    assert png.startswith(b"\x89PNG")
    heat = integrated_gradients(network, batch[:2], torch.zeros_like(batch[:2]), torch.tensor([0, 1]), steps=4)
    assert heat.shape == batch[:2].shape and torch.isfinite(heat).all() and heat.abs().sum() > 0


def test_layer_decay_slows_the_layers_far_from_the_head_and_freezing_trains_the_head_alone(
        kind: str, tmp_path: Path) -> None:
    module = classifier(kind)
    groups = parameter_groups(module.net, 0.05, 0.5)
    scales = sorted({group["lr_scale"] for group in groups})
    assert scales[-1] == 1.0 and len(scales) >= 3 and scales[0] < 0.5 ** 2, scales
    head = classifier_names(module.net)
    for group in groups:
        names = {name for name, p in module.net.named_parameters() if any(p is q for q in group["params"])}
        if any(name.startswith(head) for name in names):
            assert group["lr_scale"] == 1.0, names

    # The rates the optimizer applies: the schedule's factor times each group's scale, the same
    # factor for every group.
    decayed = classifier(kind, layerDecay=0.5, learningRate=1e-2)
    trainer = fit(decayed, kind, tmp_path)
    applied = trainer.optimizers[0].param_groups
    per_scale = {round(group["lr"] / group["lr_scale"], 12) for group in applied}
    assert len(per_scale) == 1 and 0 < per_scale.pop() <= 1e-2, [(g["lr"], g["lr_scale"]) for g in applied]
    assert len({group["lr"] for group in applied}) >= 3

    frozen = classifier(kind, freezeEpochs=1, learningRate=1e-2)
    before = {name: p.detach().clone() for name, p in frozen.net.named_parameters()}
    buffers = {name: b.detach().clone() for name, b in frozen.net.named_buffers() if b.is_floating_point()}
    fit(frozen, kind, tmp_path)
    for name, param in frozen.net.named_parameters():
        moved = not torch.equal(param, before[name])
        assert moved == name.startswith(head), f"{name} {'moved' if moved else 'stayed'} in the frozen epoch"
    for name, buffer in frozen.net.named_buffers():
        if name in buffers and not name.startswith(head):
            assert torch.equal(buffer, buffers[name]), f"{name} changed while frozen"


class DataDependent(torch.nn.Module):
    """A network torch.export cannot trace: its branch depends on the values of its input."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.fc(x.flatten(1))
        return -self.fc(x.flatten(1))


@pytest.mark.parametrize("registered", ["", "fallback"])
def test_a_network_torch_export_cannot_export_is_logged_as_its_weights_and_card(
        tmp_path: Path, registered: str) -> None:
    from mlflow.tracking import MlflowClient

    from raylight.api.tags import TAG_MODEL_URI
    from raylight_trainer.tracking.mlflow_runs import log_model

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("zoo", str(tmp_path / "artifacts"))).info.run_id
    network = DataDependent()
    logged = log_model(uri, run_id, network, (1, 4, 4), registered, {"architecture": "custom"})
    tags = client.get_run(run_id).data.tags
    assert tags[TAG_MODEL_FORMAT].startswith("weights and card only: torch.export could not export the network"), tags
    assert logged == tags[TAG_MODEL_URI] == ("models:/fallback/1" if registered else f"runs:/{run_id}/model")
    check_pretrained(logged, None, uri)
    checkpoint = read_checkpoint(logged, tracking_uri=uri)
    assert checkpoint.card.get("architecture") == "custom"
    for key, tensor in network.state_dict().items():
        assert torch.equal(checkpoint.state_dict[key], tensor), key
