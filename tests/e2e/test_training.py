"""TrainingJobs on a real local Ray, reported to a real MLflow server, read back as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from raylight.api import TrainingJob, parse_resource
from raylight_trainer.data.datasets import load_data
from raylight_trainer.runtime.storage import Storage
from raylight_trainer.training.job import run_training_job
from raylight_trainer.training.run_state import RunSettings
from tests.e2e.kill import train_through_a_worker_kill
from tests.unit.test_data import write_cifar10, write_cifar100, write_imagefolder

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]


def job(name: str, **spec: object) -> TrainingJob:
    doc = {"apiVersion": "raylight.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
           "spec": {"model": {"preset": "vit-nano", "depth": 2}, "training": {"maxEpochs": 1, "batchSize": 32},
                    "mlflow": {"experiment": "e2e-jobs"}, **spec}}
    resource = parse_resource(doc)
    assert isinstance(resource, TrainingJob)
    return resource


def settings(tmp_path: Path, uri: str, data_dir: Path | None = None) -> RunSettings:
    return RunSettings(tracking_uri=uri, storage=Storage.at(tmp_path / "results"), data_dir=str(data_dir or tmp_path))


def test_two_worker_job_is_tracked_and_its_model_predicts(tmp_path: Path, mlflow_server: str) -> None:
    resource = job("two-workers", resources={"workers": 2, "cpusPerWorker": 1},
                   mlflow={"experiment": "e2e-jobs", "registeredModelName": "e2e-two-workers"},
                   training={"maxEpochs": 3, "batchSize": 64, "learningRate": 3e-3})
    result = run_training_job(resource, settings(tmp_path, mlflow_server))
    assert result.state == "succeeded", result.error

    client = MlflowClient(mlflow_server)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["raylight.kind"] == "TrainingJob"
    assert run.data.params["resources.workers"] == "2"
    assert run.data.params["model.resolved.dim"] == "64"
    history = sorted((m.step, m.value) for m in client.get_metric_history(result.run_id, "val_acc"))
    assert [step for step, _ in history] == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(result.run_id, "lr")] == [1, 2, 3]
    best = max(value for _, value in history)
    assert run.data.metrics["best_val_acc"] == pytest.approx(best)
    assert best > 0.3  # ten classes: chance is 0.1
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert "trainingjob.yaml" in artifacts

    # The logged model is the best checkpoint: it scores what the run reported on the same split,
    # in an interpreter where Raylight cannot be imported (plain mlflow and torch), as the
    # version the run registered; its metadata says how images become its input.
    assert run.data.tags["raylight.model_uri"] == result.model_uri == "models:/e2e-two-workers/1"
    data = load_data(resource.spec.data, 16)
    images = torch.stack([data.val[i][0] for i in range(len(data.val))])  # type: ignore[arg-type]
    labels = torch.tensor([data.val[i][1] for i in range(len(data.val))])  # type: ignore[arg-type]
    torch.save({"images": images, "labels": labels}, tmp_path / "val.pt")
    clean = subprocess.run([sys.executable, "-I", "-c", PREDICT_WITHOUT_RAYLIGHT, mlflow_server, result.model_uri,
                            str(tmp_path / "val.pt")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert clean.returncode == 0, clean.stderr[-3000:]
    answer = json.loads(clean.stdout.splitlines()[-1])
    # Each worker validates a disjoint share, unpadded: the reported accuracy is the split's.
    assert answer["accuracy"] == pytest.approx(best, abs=1e-6)
    assert answer["pyfunc_accuracy"] == pytest.approx(best, abs=1e-6)
    assert answer["metadata"]["input"] == {
        "shape": [1, 16, 16], "dtype": "float32", "mean": [0.3], "std": [0.38],
        "preprocess": "pixels scaled to [0, 1], resized to shape, then (x - mean) / std per channel"}
    assert answer["metadata"]["config"]["depth"] == 2 and answer["raylight_importable"] is False


# Run with `python -I`: loads the model by its URI as someone without Raylight would.
PREDICT_WITHOUT_RAYLIGHT = """
import json, sys

class NoRaylight:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("raylight", "raylight_trainer"):
            raise ImportError(name + " is not installed here")

sys.meta_path.insert(0, NoRaylight())
import mlflow, mlflow.pyfunc, mlflow.pytorch, torch

tracking_uri, model_uri, data = sys.argv[1:]
mlflow.set_tracking_uri(tracking_uri)
val = torch.load(data)
model = mlflow.pytorch.load_model(model_uri)
with torch.no_grad():
    accuracy = (model(val["images"]).argmax(1) == val["labels"]).float().mean().item()
logits = mlflow.pyfunc.load_model(model_uri).predict(val["images"].numpy())
pyfunc_accuracy = (torch.as_tensor(logits).argmax(1) == val["labels"]).float().mean().item()
print(json.dumps({"accuracy": accuracy, "pyfunc_accuracy": pyfunc_accuracy,
                  "metadata": mlflow.models.get_model_info(model_uri).metadata,
                  "raylight_importable": any(m.startswith("raylight") for m in sys.modules)}))
"""


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "imagefolder", "synthetic"])
def test_each_dataset_format_trains(tmp_path: Path, mlflow_server: str, dataset: str) -> None:
    paths = {"cifar10": write_cifar10, "cifar100": write_cifar100, "imagefolder": write_imagefolder}
    data: dict[str, object] = {"dataset": dataset}
    if dataset in paths:
        paths[dataset](tmp_path / "set")
        data["path"] = "set"  # relative: resolved against the data directory
    resource = job(f"format-{dataset}", data=data, model={"preset": "vit-nano", "depth": 1, "imageSize": 16})
    result = run_training_job(resource, settings(tmp_path, mlflow_server))
    assert result.state == "succeeded", result.error
    assert result.epochs == 1 and result.model_uri
    assert 0.0 <= result.metrics["val_acc"] <= 1.0


def test_device_augmentation_trains_a_cifar_job_on_uint8_batches(tmp_path: Path, mlflow_server: str) -> None:
    write_cifar10(tmp_path / "set")
    resource = job("device-augmentation", data={"dataset": "cifar10", "path": "set", "deviceAugmentation": True},
                   model={"preset": "vit-nano", "depth": 1, "imageSize": 16},
                   training={"maxEpochs": 2, "batchSize": 16})
    result = run_training_job(resource, settings(tmp_path, mlflow_server))
    assert result.state == "succeeded", result.error
    assert result.epochs == 2 and result.model_uri and 0.0 <= result.metrics["val_acc"] <= 1.0


def test_missing_dataset_fails_the_job_with_the_path(tmp_path: Path, mlflow_server: str) -> None:
    resource = job("missing-data", data={"dataset": "imagefolder", "path": "nowhere"},
                   faultTolerance={"maxFailures": 0})
    result = run_training_job(resource, settings(tmp_path, mlflow_server))
    assert result.state == "failed"
    assert result.error and str(tmp_path / "nowhere") in result.error
    run = MlflowClient(mlflow_server).get_run(result.run_id)
    assert run.info.status == "FAILED" and str(tmp_path / "nowhere") in run.data.tags["raylight.error"]


def test_worker_killed_mid_run_resumes_from_its_checkpoint(tmp_path: Path, mlflow_server: str) -> None:
    """A real worker failure: SIGKILL the training worker after epoch 3; the run resumes, not restarts.

    Ray Train's controller learns of a reported checkpoint by polling the workers: a kill right after
    the first epochs can beat it there on a loaded machine, so the kill waits for epoch 3."""
    resource = job("survives-a-kill", training={"maxEpochs": 5, "batchSize": 64},
                   faultTolerance={"maxFailures": 2, "checkpointsToKeep": 2})
    client = MlflowClient(mlflow_server)
    train_through_a_worker_kill(resource, settings(tmp_path, mlflow_server), client, "e2e-jobs", 3)
    # checkpointsToKeep: 2, plus the latest where it is not among the best. The checkpoints whose
    # reports died with the killed worker are deleted too.
    train_dir = tmp_path / "results" / "default" / "survives-a-kill" / "train"
    checkpoints = [path for path in train_dir.glob("checkpoint_*") if path.is_dir()]
    assert 1 <= len(checkpoints) <= 3, sorted(p.name for p in checkpoints)


@pytest.mark.smoke  # tests/run --quick runs it whenever the trainer changed
def test_raylight_run_trainingjob_prints_a_json_summary(
    workdir: Path, mlflow_server: str, capsys: pytest.CaptureFixture
) -> None:
    import json

    import yaml

    from raylight.cli import main

    manifest = workdir / "job.yaml"
    manifest.write_text(yaml.safe_dump(job("cli-job", training={"maxEpochs": 2, "batchSize": 64})
                                       .model_dump(mode="json", by_alias=True, exclude_none=True)))
    assert main(["run", str(manifest), "--tracking-uri", mlflow_server, "--output", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kind"] == "TrainingJob" and summary["state"] == "succeeded"
    assert summary["epochs"] == 2 and 0 < summary["bestMetric"] <= 1
    run = MlflowClient(mlflow_server).get_run(summary["mlflow"]["runId"])
    assert run.data.metrics["best_val_acc"] == pytest.approx(summary["bestMetric"])
    assert (workdir / "raylight_results" / "default" / "cli-job").is_dir()
