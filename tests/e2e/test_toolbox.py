"""The trainer's toolbox end to end: EfficientNet on two CPU workers, F1/AUROC over the whole
validation split, callbacks, integrated-gradients pictures and W&B offline files."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_auroc, multiclass_f1_score

from raylight.api import TuneSweep, parse_resource
from raylight_trainer.data.datasets import load_data
from raylight_trainer.tracking.attributions import ARTIFACT_DIR, ARTIFACT_NAME
from raylight_trainer.training.job import run_training_job
from raylight_trainer.tuning.sweep import run_sweep
from tests.e2e.test_training import job, settings

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]
EFFICIENTNET = {"architecture": "efficientnet", "imageSize": 16, "widthMultiplier": 0.25, "depthMultiplier": 0.25}


def history(client: MlflowClient, run_id: str, name: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))


def png_size(client: MlflowClient, run_id: str) -> tuple[int, int]:
    from PIL import Image

    local = client.download_artifacts(run_id, f"{ARTIFACT_DIR}/{ARTIFACT_NAME}")
    image = Image.open(local)
    image.load()
    pixels = image.convert("L").getextrema()
    assert pixels[0] < pixels[1], "the picture is blank"
    assert image.format == "PNG"
    return image.size


def test_efficientnet_on_two_workers(tmp_path: Path, mlflow_server: str) -> None:
    resource = job(
        "effnet-two-workers",
        model=EFFICIENTNET,
        training={"maxEpochs": 3, "batchSize": 64, "learningRate": 3e-3, "warmupEpochs": 1},
        resources={"workers": 2, "cpusPerWorker": 1},
        objective={"metric": "val_f1", "mode": "max"},
        faultTolerance={"checkpointsToKeep": 1},
        callbacks={"lrMonitor": {"interval": "step"}},
        tracking={"wandb": {"project": "raylight-e2e", "mode": "offline"}},
    )
    result = run_training_job(resource, settings(tmp_path, mlflow_server))
    assert result.state == "succeeded", result.error
    client = MlflowClient(mlflow_server)
    run = client.get_run(result.run_id)
    assert run.data.params["model.architecture"] == "efficientnet"
    assert run.data.params["model.resolved.stem_stride"] == "1"

    # F1 and AUROC each epoch, over the whole split although each worker saw half of it: the
    # logged model (the best checkpoint by val_f1) scores exactly what its epoch reported.
    f1, auroc, acc = (history(client, result.run_id, name) for name in ("val_f1", "val_auroc", "val_acc"))
    assert [step for step, _ in f1] == [1, 2, 3] and [step for step, _ in auroc] == [1, 2, 3]
    best_epoch, best_f1 = max(f1, key=lambda item: item[1])
    assert run.data.metrics["best_val_f1"] == pytest.approx(best_f1)
    model = mlflow.pytorch.load_model(result.model_uri)  # an exported graph, already in eval mode
    data = load_data(resource.spec.data, 16)
    images = torch.stack([data.val[i][0] for i in range(len(data.val))])  # type: ignore[arg-type]
    labels = torch.tensor([data.val[i][1] for i in range(len(data.val))])  # type: ignore[arg-type]
    with torch.no_grad():
        logits = model(images)
    assert multiclass_f1_score(logits, labels, 10, average="macro").item() == pytest.approx(best_f1, abs=1e-4)
    assert multiclass_auroc(logits, labels, 10).item() == pytest.approx(dict(auroc)[best_epoch], abs=1e-4)
    assert multiclass_accuracy(logits, labels, 10, average="micro").item() == pytest.approx(
        dict(acc)[best_epoch], abs=1e-4)

    # The top-k checkpoints by the objective (k = 1): the best epoch's is kept; of the other two
    # at most the latest (Ray keeps it for resuming).
    from ray.train import Result

    kept = Result.from_path(str(tmp_path / "results" / "default" / "effnet-two-workers" / "train")).best_checkpoints
    kept_epochs = sorted(int(metrics["epochs"]) for _, metrics in kept)
    assert best_epoch in kept_epochs and len(kept_epochs) <= 2 and set(kept_epochs) <= {best_epoch, 3}

    # The lr monitor at step interval: warmup over the first epoch, then cosine decay.
    lrs = history(client, result.run_id, "lr")
    steps_per_epoch = len(lrs) // 3
    assert len(lrs) == 3 * steps_per_epoch and steps_per_epoch >= 10
    values = [value for _, value in lrs]
    peak = values.index(max(values))
    assert abs(peak - (steps_per_epoch - 1)) <= 1, (peak, steps_per_epoch)
    assert values[0] < 0.2 * max(values) and values[-1] < 0.1 * max(values)

    # Integrated gradients: a real PNG of the expected size (10 classes x 2 samples).
    assert png_size(client, result.run_id) == (1600, 660)
    assert result.attributions_uri == f"runs:/{result.run_id}/{ARTIFACT_DIR}/{ARTIFACT_NAME}"

    # W&B offline: a run named after the MLflow run, its binary log written under the storage path.
    offline = list((tmp_path / "results" / "default" / "effnet-two-workers" / "wandb").rglob("*.wandb"))
    assert [path.name for path in offline] == [f"run-{result.run_id}.wandb"]
    assert offline[0].stat().st_size > 1000
    assert b"val_f1" in offline[0].read_bytes()


def test_early_stopping_ends_a_stalled_run(tmp_path: Path, mlflow_server: str) -> None:
    # No improvement can reach minDelta 10 on val_loss: stop after patience 1 epoch past the first.
    resource = job("early-stop", model={"preset": "vit-nano", "depth": 1}, training={"maxEpochs": 6, "batchSize": 64},
                   objective={"metric": "val_loss", "mode": "min"},
                   callbacks={"earlyStopping": {"patience": 1, "minDelta": 10.0}},
                   interpretability={"enabled": False})
    result = run_training_job(resource, settings(tmp_path, mlflow_server))
    assert result.state == "succeeded", result.error
    assert result.epochs == 2
    client = MlflowClient(mlflow_server)
    assert [a.path for a in client.list_artifacts(result.run_id) if a.path == ARTIFACT_DIR] == []


def test_sweep_on_val_f1_explains_its_best_trial(tmp_path: Path, mlflow_server: str) -> None:
    doc = {
        "apiVersion": "raylight.dev/v1alpha1", "kind": "TuneSweep", "metadata": {"name": "f1-sweep"},
        "spec": {
            "trial": {"model": {"preset": "vit-nano", "depth": 1}, "training": {"maxEpochs": 1, "batchSize": 64},
                      "interpretability": {"samplesPerClass": 1, "maxClasses": 4, "steps": 8}},
            "searchSpace": {"training.learningRate": {"choice": [1e-4, 3e-3]}},
            "objective": {"metric": "val_f1", "mode": "max"},
            "numSamples": 2, "maxConcurrentTrials": 1, "scheduler": {"fifo": {}},
            "mlflow": {"experiment": "e2e-toolbox-sweep"},
            "tracking": {"wandb": {"project": "raylight-e2e", "mode": "offline"}},
        },
    }
    sweep = parse_resource(doc)
    assert isinstance(sweep, TuneSweep)
    result = run_sweep(sweep, settings(tmp_path, mlflow_server))
    assert result.best is not None and result.counts()["succeeded"] == 2
    client = MlflowClient(mlflow_server)
    parent = client.get_run(result.parent_run_id)
    assert parent.data.metrics["best_val_f1"] == pytest.approx(result.best.metric)
    assert parent.data.metrics["best_val_f1"] == max(t.metric or 0 for t in result.trials)
    # The best trial's run has the picture (4 classes x 1 sample); the other trial's has none.
    assert result.best.run_id
    assert png_size(client, result.best.run_id) == (640, 330)
    assert result.attributions_uri == f"runs:/{result.best.run_id}/{ARTIFACT_DIR}/{ARTIFACT_NAME}"
    other = next(t for t in result.trials if t is not result.best)
    assert other.run_id
    assert ARTIFACT_DIR not in {a.path for a in client.list_artifacts(other.run_id)}
    # Each trial is its own W&B run, named by its MLflow child run.
    offline = (tmp_path / "results" / "default" / "f1-sweep" / "wandb").rglob("*.wandb")
    assert sorted(path.name for path in offline) == sorted(f"run-{t.run_id}.wandb" for t in result.trials)
