"""Runs whose storage is a real S3-compatible store (versitygw, tests/objectstore): checkpoints,
Tune's state and the resume file go there and come back from there.

The Ray instance starts with the store's endpoint and credentials in its environment, as a Ray pod
gets them from spec.cluster.storageSecret: Ray's workers read the store with them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from raylight.api import TrainingJob, parse_resource
from raylight_trainer.runtime.storage import Storage
from raylight_trainer.training.job import run_training_job
from raylight_trainer.training.run_state import RunSettings
from tests.conftest import ObjectStore
from tests.e2e.kill import kill_after_epoch
from tests.e2e.test_interrupt import runs_tagged, stop, wait_until
from tests.e2e.test_sweep import child_runs, sweep_doc
from tests.unit.test_data import write_cifar10, write_imagefolder
from tests.unit.test_dataset_cache import upload

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store_env(object_store: ObjectStore) -> Iterator[dict[str, str]]:
    """This process's environment with the store's endpoint and credentials (before Ray starts: its
    workers inherit the environment Ray started with)."""
    saved = {name: os.environ.get(name) for name in object_store.env()}
    os.environ.update(object_store.env())
    yield {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def objects_under(uri: str) -> list[str]:
    from pyarrow.fs import FileSelector, FileType

    store = Storage.at(uri)
    infos = store.filesystem.get_file_info(FileSelector(store.path, recursive=True, allow_not_found=True))
    return [info.path.removeprefix(store.path + "/") for info in infos if info.type == FileType.File]


def test_a_worker_killed_mid_run_resumes_from_a_checkpoint_read_back_from_the_store(
        tmp_path: Path, mlflow_server: str, object_store: ObjectStore, store_env: dict[str, str]) -> None:
    import ray

    from raylight_trainer.driver import start_ray

    bucket = f"s3://{object_store.make_bucket()}"
    doc = {"apiVersion": "raylight.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "s3-kill"},
           "spec": {"model": {"preset": "vit-nano", "depth": 2}, "training": {"maxEpochs": 5, "batchSize": 64},
                    "faultTolerance": {"maxFailures": 2, "checkpointsToKeep": 2},
                    "mlflow": {"experiment": "e2e-s3"}}}
    resource = parse_resource(doc)
    assert isinstance(resource, TrainingJob)
    client = MlflowClient(mlflow_server)
    start_ray(num_cpus=2, verbose=False)
    try:
        killer, killed = kill_after_epoch(client, "e2e-s3", "tags.`raylight.name` = 's3-kill'", 3, "RayTrainWorker")
        result = run_training_job(resource, RunSettings(tracking_uri=mlflow_server, storage=Storage.at(bucket),
                                                        data_dir=str(tmp_path)))
        killer.join(timeout=5)
    finally:
        ray.shutdown()
    assert killed, "the worker was never killed"
    assert result.state == "succeeded", result.error
    steps = [m.step for m in client.get_metric_history(result.run_id, "val_acc")]
    assert sorted(set(steps)) == [1, 2, 3, 4, 5]
    assert steps.count(1) == 1, f"epoch 1 ran twice: the run restarted instead of resuming ({steps})"
    assert result.model_uri, "the best checkpoint was read back from the store and logged"
    kept = objects_under(f"{bucket}/default/s3-kill")
    assert "raylight-state.json" in kept
    assert any(name.endswith("checkpoint.ckpt") for name in kept), kept
    # checkpointsToKeep: 2, plus the latest where it is not among the best. The checkpoints whose
    # reports died with the killed worker are deleted too.
    checkpoints = {name.split("/")[1] for name in kept if name.startswith("train/checkpoint_") and name.count("/") > 1}
    assert 1 <= len(checkpoints) <= 3, sorted(checkpoints)
    assert not (tmp_path / "default").exists(), "nothing of the run's state on the local disk"


def run_command(manifest: Path, mlflow_server: str, storage: str) -> list[str]:
    return [sys.executable, "-m", "raylight.cli", "run", str(manifest), "--tracking-uri", mlflow_server,
            "--storage-path", storage, "--data-dir", storage.rsplit("/", 1)[0] + "/datasets",
            "--data-cache", str(manifest.parent / "cache"), "--num-cpus", "2", "--output", "json"]


def start(command: list[str], directory: Path, env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    """The command in a session of its own (a group to signal, as a terminal's Ctrl-C does)."""
    return subprocess.Popen(command, cwd=directory, env=env, start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=log.open("w"))


def test_a_job_on_the_store_stopped_by_sigterm_resumes_from_the_store(
        tmp_path: Path, mlflow_server: str, object_store: ObjectStore, store_env: dict[str, str]) -> None:
    """Its ImageFolder dataset is read from the store too (data.path relative to --data-dir s3://...)."""
    bucket = f"s3://{object_store.make_bucket()}"
    write_imagefolder(tmp_path / "pets", per_class=80)  # epochs of seconds: SIGTERM lands mid-run
    upload(tmp_path / "pets", f"{bucket}/datasets/pets")
    doc = {"apiVersion": "raylight.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "s3-sigterm"},
           "spec": {"model": {"preset": "vit-nano", "depth": 1, "imageSize": 16},
                    "data": {"dataset": "imagefolder", "path": "pets"},
                    "training": {"maxEpochs": 6, "batchSize": 8}, "mlflow": {"experiment": "e2e-s3-sigterm"}}}
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    command = run_command(manifest, mlflow_server, f"{bucket}/runs")
    client = MlflowClient(mlflow_server)
    log = tmp_path / "first.log"
    first = start(command, tmp_path, store_env, log)
    wait_until(first, log, lambda: any(r.data.metrics.get("epoch", 0) >= 2
                                       for r in runs_tagged(client, "e2e-s3-sigterm", "")), interval=0.2)
    code, out, _ = stop(first, log, signal.SIGTERM)
    assert code == 143, log.read_text()[-3000:]
    run_id = yaml.safe_load(out)["mlflow"]["runId"]
    second = subprocess.run(command, cwd=tmp_path, env=store_env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = yaml.safe_load(second.stdout)
    assert resumed["mlflow"]["runId"] == run_id and resumed["state"] == "succeeded"
    steps = [m.step for m in client.get_metric_history(run_id, "val_acc")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6], steps  # resumed from the store's checkpoint: no epoch twice
    assert len(runs_tagged(client, "e2e-s3-sigterm", "")) == 1
    assert not (tmp_path / "raylight_results").exists()
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 1, "one copy of the dataset"


def test_an_asha_sweep_on_the_store_killed_resumes_without_rerunning_finished_trials(
        tmp_path: Path, mlflow_server: str, object_store: ObjectStore, store_env: dict[str, str]) -> None:
    """The driver SIGKILLed once a trial has ended, then the same command: Tune's state, the
    checkpoints and the scheduler's rungs come back from the store, what ended is not trained again,
    and nothing has two child runs. Its trials read a CIFAR-format dataset from the store through
    the node's one copy, and are data-parallel (2 workers), so that a sweep whose trials drive Ray
    Train worker groups stays covered (the other sweeps' one-worker trials train in their Tune
    trials' own processes). Ctrl-C's graceful stop of a sweep: test_interrupt."""
    bucket = f"s3://{object_store.make_bucket()}"
    write_cifar10(tmp_path / "cifar", per_batch=300)
    upload(tmp_path / "cifar", f"{bucket}/datasets/cifar")
    doc = sweep_doc("s3-asha", numSamples=3, maxConcurrentTrials=1,
                    scheduler={"asha": {"gracePeriod": 1, "reductionFactor": 2}})
    doc["spec"]["trial"]["training"]["maxEpochs"] = 2
    doc["spec"]["trial"]["data"] = {"dataset": "cifar10", "path": "cifar"}
    doc["spec"]["trial"]["model"]["imageSize"] = 32
    doc["spec"]["trial"]["resources"] = {"workers": 2, "cpusPerWorker": 1}
    manifest = tmp_path / "sweep.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    command = run_command(manifest, mlflow_server, f"{bucket}/runs")
    client = MlflowClient(mlflow_server)
    log = tmp_path / "first.log"
    first = start(command, tmp_path, store_env, log)
    ended = re.compile(r"trial (\S+) (?:finished|stopped early by ASHA)")
    wait_until(first, log, lambda: bool(ended.search(log.read_text())), interval=0.5)
    time.sleep(4)  # let Tune write its experiment state after the trial ended
    killed_at = time.time()
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    # Its log is a file, not a terminal: a line per trial event and epoch, there as they happened.
    first_lines = log.read_text()
    done_before = set(ended.findall(first_lines))
    for trial_id in done_before:
        assert f"trial {trial_id} started" in first_lines, first_lines[-3000:]
        assert re.search(rf"trial {trial_id} epoch \d/2 val_acc=\d\.\d{{4}}", first_lines), first_lines[-3000:]

    second = subprocess.run(command, cwd=tmp_path, env=store_env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = yaml.safe_load(second.stdout)
    assert resumed["resumed"] is True
    assert resumed["trials"]["total"] == 3 and resumed["trials"]["failed"] == 0
    parents = runs_tagged(client, "e2e-s3-asha", "tags.`raylight.kind` = 'TuneSweep'")
    assert len(parents) == 1 and parents[0].info.run_id == resumed["mlflow"]["parentRunId"]
    children = child_runs(client, resumed["mlflow"]["experimentId"], parents[0].info.run_id)
    trial_ids = [r.data.tags["raylight.trial_id"] for r in children]
    assert len(trial_ids) == 3 and len(set(trial_ids)) == 3, trial_ids
    # The resumed run's log shows the epochs of every trial that had not ended before.
    shown = set(re.findall(r"trial (\S+) epoch \d/2", second.stderr))
    assert set(trial_ids) - done_before <= shown, (sorted(done_before), second.stderr[-3000:])
    for run in children:
        history = client.get_metric_history(run.info.run_id, "val_acc")
        steps = [m.step for m in history]
        assert steps and sorted(steps) == list(range(1, max(steps) + 1)), steps  # no epoch twice, no gap
        if run.data.tags["raylight.trial_id"] in done_before:
            assert max(m.timestamp for m in history) / 1000 < killed_at, "an ended trial was trained again"
    assert resumed["mlflow"]["modelUri"], "the best trial's checkpoint was read back from the store"
    assert "experiment_state" in " ".join(objects_under(f"{bucket}/runs/default/s3-asha"))
    assert not (tmp_path / "raylight_results").exists()


def test_mlflow_keeps_the_runs_artifacts_on_the_store_when_its_server_is_set_so(
        tmp_path: Path, mlflow_server_on_s3: tuple[str, str], object_store: ObjectStore,
        store_env: dict[str, str]) -> None:
    """The chart's `mlflow.server.artifactsDestination: s3://...`: the trainer uploads through the
    server, which writes the model, the pictures and the logs to the store; the model loads back."""
    import mlflow
    import torch

    tracking_uri, bucket = mlflow_server_on_s3
    doc = {"apiVersion": "raylight.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "s3-artifacts"},
           "spec": {"model": {"preset": "vit-nano", "depth": 1}, "training": {"maxEpochs": 1, "batchSize": 64},
                    "mlflow": {"experiment": "e2e-s3-artifacts"}}}
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    command = [sys.executable, "-m", "raylight.cli", "run", str(manifest), "--tracking-uri", tracking_uri,
               "--num-cpus", "2", "--output", "json"]
    # The store's keys are the server's alone: the run itself has none.
    env = {k: v for k, v in store_env.items() if not k.startswith("AWS_")}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = yaml.safe_load(done.stdout)
    run_id, model_uri = summary["mlflow"]["runId"], summary["mlflow"]["modelUri"]
    stored = objects_under(f"{bucket}/mlflow")
    assert any(name.endswith("MLmodel") for name in stored), stored
    assert any(f"{run_id}/artifacts/attributions/" in name for name in stored), stored
    assert any(f"{run_id}/artifacts/logs/" in name for name in stored), stored
    earlier = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        logits = mlflow.pyfunc.load_model(model_uri).predict(torch.zeros(2, 1, 16, 16).numpy())
    finally:
        mlflow.set_tracking_uri(earlier)
    assert torch.as_tensor(logits).shape == (2, 10)
