"""Fine-tuning end to end (issue 28) on a real local Ray, a real MLflow server and the real object
store: a sweep searches layerDecay from the model another job registered (each trial scoring about
what that model ended at after one epoch, where random weights are near chance), and a TrainingJob
of timm's ResNet starts from weights on the store and resumes after its worker is killed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import timm
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import save_file

from raylight.api import TrainingJob, TuneSweep, parse_resource
from raylight.api.pods import DATA_CACHE_ENV
from raylight.api.tags import TAG_MODEL_FORMAT, TAG_MODEL_URI
from raylight_trainer.runtime.storage import Storage
from raylight_trainer.training.job import run_training_job
from raylight_trainer.training.run_state import RunSettings
from raylight_trainer.tuning.sweep import run_sweep
from tests.conftest import ObjectStore
from tests.e2e.kill import train_through_a_worker_kill
from tests.unit.test_dataset_cache import upload

pytestmark = pytest.mark.slow

EXPERIMENT = "e2e-fine-tuning"
BASE_MODEL = "e2e-ft-base"


@pytest.fixture(scope="module")
def ray_with_store(object_store: ObjectStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A local Ray (2 CPUs) whose workers have the object store's endpoint and keys, and a data
    cache of their own: Ray's workers take the environment the driver had when Ray started."""
    import ray

    from raylight_trainer.driver import start_ray

    saved = dict(os.environ)
    os.environ.update({**object_store.env(), DATA_CACHE_ENV: str(tmp_path_factory.mktemp("cache")),
                       "RAY_AIR_NEW_OUTPUT": "0"})
    start_ray(num_cpus=2, verbose=False)
    try:
        yield
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)


def job(name: str, model: dict, **spec: object) -> TrainingJob:
    doc = {"apiVersion": "raylight.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
           "spec": {"model": model, "data": {"dataset": "digits"}, "mlflow": {"experiment": EXPERIMENT}, **spec}}
    resource = parse_resource(doc)
    assert isinstance(resource, TrainingJob)
    return resource


def settings(tmp_path: Path, uri: str) -> RunSettings:
    return RunSettings(tracking_uri=uri, storage=Storage.at(tmp_path / "results"), data_dir=str(tmp_path))


def first_val_acc(client: MlflowClient, run_id: str) -> float:
    return min(client.get_metric_history(run_id, "val_acc"), key=lambda m: (m.step, m.timestamp)).value


@pytest.fixture(scope="module")
def base_model(ray_with_store: None, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> float:
    """A ViT trained on digits and registered as BASE_MODEL; its best validation accuracy."""
    base = job("ft-base", {"preset": "vit-nano", "depth": 2},
               training={"maxEpochs": 8, "batchSize": 32, "learningRate": 3e-3},
               mlflow={"experiment": EXPERIMENT, "registeredModelName": BASE_MODEL})
    result = run_training_job(base, settings(tmp_path_factory.mktemp("base"), mlflow_server))
    assert result.state == "succeeded", result.error
    best = MlflowClient(mlflow_server).get_run(result.run_id).data.metrics["best_val_acc"]
    assert best > 0.5, "the base model learned too little to tell a start from it from a random one"
    return best


def test_a_sweep_searches_layer_decay_from_a_registered_model(
        tmp_path: Path, mlflow_server: str, base_model: float) -> None:
    doc = {"apiVersion": "raylight.dev/v1alpha1", "kind": "TuneSweep", "metadata": {"name": "ft-sweep"},
           "spec": {"trial": {"model": {"preset": "vit-nano", "depth": 2, "pretrained": f"models:/{BASE_MODEL}/1"},
                              "data": {"dataset": "digits"},
                              "training": {"maxEpochs": 1, "batchSize": 64, "learningRate": 1e-4}},
                    "searchSpace": {"training.layerDecay": {"uniform": [0.5, 0.95]}},
                    "numSamples": 2, "scheduler": {"fifo": {}}, "mlflow": {"experiment": f"{EXPERIMENT}-sweep"}}}
    sweep = parse_resource(doc)
    assert isinstance(sweep, TuneSweep)
    result = run_sweep(sweep, settings(tmp_path, mlflow_server))
    assert [t.state for t in result.trials] == ["succeeded", "succeeded"], [t.error for t in result.trials]
    client = MlflowClient(mlflow_server)
    decays = set()
    for trial in result.trials:
        assert trial.run_id is not None
        run = client.get_run(trial.run_id)
        decays.add(float(run.data.params["training.layerDecay"]))
        assert run.data.params["pretrained.loaded"].startswith(f"started from models:/{BASE_MODEL}/1")
        assert first_val_acc(client, trial.run_id) > base_model - 0.15
    assert len(decays) == 2 and all(0.5 <= decay <= 0.95 for decay in decays), decays


def test_a_timm_resnet_starts_from_weights_on_the_store_and_resumes_after_its_worker_is_killed(
        tmp_path: Path, mlflow_server: str, object_store: ObjectStore, ray_with_store: None) -> None:
    """timm's resnet18 as a user downloads it (1000 classes, RGB), on the object store: the classifier
    and the input convolution are adapted to digits (10 classes, grayscale); a killed worker resumes
    from its checkpoint, not from the weights again; the model is logged as a graph."""
    torch.manual_seed(0)
    weights = tmp_path / "resnet18.safetensors"
    save_file(timm.create_model("resnet18", pretrained=False).state_dict(), str(weights))
    uri = f"s3://{object_store.make_bucket()}/weights/resnet18.safetensors"
    upload(weights, uri)

    resource = job("ft-timm-resnet", {"architecture": "timm", "name": "resnet18", "imageSize": 32, "pretrained": uri},
                   training={"maxEpochs": 4, "batchSize": 64, "learningRate": 1e-3, "freezeEpochs": 1},
                   faultTolerance={"maxFailures": 2, "checkpointsToKeep": 2})
    client = MlflowClient(mlflow_server)
    result = train_through_a_worker_kill(resource, settings(tmp_path, mlflow_server), client, EXPERIMENT, 2)
    run = client.get_run(result.run_id)
    loaded = run.data.params["pretrained.loaded"]
    assert loaded.startswith(f"started from {uri}:"), loaded
    assert "classifier re-initialised for 10 classes (the checkpoint's has 1000)" in loaded, loaded
    assert "input convolution adapted from 3 to 1 channel(s)" in loaded, loaded
    assert run.data.tags[TAG_MODEL_FORMAT] == "pt2"
    # Plain mlflow and torch load the logged graph and run it, without Raylight's code or timm's.
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pytorch.load_model(run.data.tags[TAG_MODEL_URI])
    shape = mlflow.models.get_model_info(run.data.tags[TAG_MODEL_URI]).metadata["input"]["shape"]
    assert shape == [1, 32, 32]
    with torch.no_grad():
        assert model(torch.zeros(3, *shape)).shape == (3, 10)
