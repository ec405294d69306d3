"""A TrainingJob: one distributed run, tracked as one MLflow run; helpers shared with sweeps."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import posixpath
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from raylight.api import TrainingJob
from raylight.api.tags import TAG_ERROR, TAG_INTERRUPTED

from .attributions import PendingAttributions
from .interrupt import finishing_up, in_background_thread, received_signal, signal_name
from .resources import check_fits
from .run_logs import keep_driver_log
from .storage import Storage
from .tracking import (
    TAG_STATE,
    ensure_experiment,
    flatten,
    log_model,
    log_params,
    log_yaml,
    metric_history,
    resolved_spec,
    resource_tags,
    root_cause,
    wandb_settings,
)
from .train import REPORTED_METRICS, build_trainer, input_shape, load_checkpoint_model, model_card, trial_part

log = logging.getLogger(__name__)


@dataclass
class RunSettings:
    """Where a run keeps its state: MLflow, Ray storage (checkpoints, Tune state), datasets."""

    tracking_uri: str
    storage: Storage
    data_dir: str | None = None
    artifact_root: Path | None = None  # set for local (file/SQLite) MLflow stores


@dataclass
class JobResult:
    name: str
    namespace: str
    tracking_uri: str
    experiment_id: str
    experiment_name: str
    run_id: str
    state: str
    epochs: int
    metric: float | None
    metrics: dict[str, float]
    model_uri: str | None
    error: str | None
    wall_seconds: float
    attributions_uri: str | None = None
    interrupted: int | None = None  # the signal that stopped it before it ended (resume: run it again)


STATE_FILE = "raylight-state.json"


# Fields that say where and whether a run goes, not what it trains: changing them resumes.
_PLACEMENT_FIELDS = {"cluster", "suspend"}


def spec_hash(spec: BaseModel) -> str:
    # Defaults left out: a release that adds a field must not restart interrupted runs.
    trained = spec.model_dump(mode="json", exclude=_PLACEMENT_FIELDS, exclude_defaults=True)
    return hashlib.sha256(json.dumps(trained, sort_keys=True).encode()).hexdigest()[:16]


def claim_run_dir(run_dir: Storage, digest: str, fresh: bool, uid: str | None = None) -> dict[str, Any]:
    """The saved state of an interrupted run of the same spec, to resume; else {}.

    A finished run, a changed spec, another resource of the same name (a deleted and re-created
    one: its uid differs, and the operator finds runs by uid) or `fresh` starts over: earlier
    results are moved aside (kept, never mixed with the new run's).
    """
    state = saved_state(run_dir)
    same_resource = uid is None or state.get("uid") in (None, uid)
    if state.get("spec_hash") == digest and not state.get("finished") and not fresh and same_resource:
        return state
    run_dir.move_aside()
    return {}


def saved_state(run_dir: Storage) -> dict[str, Any]:
    """The run directory's state file ({} where there is none yet)."""
    text = (run_dir / STATE_FILE).read_text()
    return dict(json.loads(text)) if text else {}


def save_state(run_dir: Storage, **values: Any) -> None:
    (run_dir / STATE_FILE).write_text(json.dumps({**saved_state(run_dir), **values}))


def set_final(client: MlflowClient, run_id: str, status: str) -> None:
    client.set_terminated(run_id, status=status, end_time=int(time.time() * 1000))


def resumed_run(client: MlflowClient, run_id: str) -> None:
    """A run taken up again: no longer marked as interrupted."""
    if TAG_INTERRUPTED in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, TAG_INTERRUPTED)


def train_result(run_dir: Storage) -> ray.train.Result | None:
    """Ray Train's record of a run directory: its checkpoints and their metrics (None if none)."""
    from ray.train import Result

    if not run_dir.exists():
        return None
    try:
        return Result.from_path(run_dir.path, storage_filesystem=run_dir.ray_filesystem)
    except Exception:
        return None


def best_checkpoint_model(result: ray.train.Result | None, metric: str, mode: str) -> torch.nn.Module | None:
    """The model at the best checkpoint of a Ray Train run's record (None if it kept none); from an
    object store, the checkpoint is downloaded to a temporary directory first."""
    if result is None:
        return None
    candidates = [(ckpt, m) for ckpt, m in (result.best_checkpoints or []) if metric in m]
    if not candidates:
        return None
    pick = max if mode == "max" else min
    checkpoint, _ = pick(candidates, key=lambda item: float(item[1][metric]))
    with checkpoint.as_directory() as directory:
        return load_checkpoint_model(directory)


def prune_unrecorded_checkpoints(run_dir: Storage, result: ray.train.Result | None) -> list[str]:
    """Delete the checkpoints of a finished Ray Train run that its record (`train_result(run_dir)`)
    does not list; their names.

    Ray Train's controller learns of a worker's checkpoint by polling it (every few seconds). A
    worker that dies takes the reports not yet collected with it: their checkpoints were uploaded,
    but are never counted against checkpointsToKeep nor deleted, so every failure could leave some
    behind for good. Only for a run that ended well: nothing resumes from them."""
    from pyarrow.fs import FileSelector, FileType

    if result is None:
        return []
    recorded = {posixpath.normpath(ckpt.path) for ckpt, _ in result.best_checkpoints or []}
    if result.checkpoint is not None:
        recorded.add(posixpath.normpath(result.checkpoint.path))
    if not recorded:
        return []  # a record without checkpoints: not one to judge the directory by
    filesystem, pruned = run_dir.filesystem, []
    try:
        for info in filesystem.get_file_info(FileSelector(run_dir.path, allow_not_found=True)):
            if (info.type == FileType.Directory and info.base_name.startswith("checkpoint_")
                    and posixpath.normpath(info.path) not in recorded):
                filesystem.delete_dir(info.path)
                pruned.append(info.base_name)
    except OSError as exc:  # only space: the run's results stand without it
        log.warning("could not delete the unrecorded checkpoints under %s: %s", run_dir, exc)
    return pruned


def run_training_job(job: TrainingJob, settings: RunSettings, fresh: bool = False) -> JobResult:
    """Train one TrainingJob on the connected Ray cluster, tracked in MLflow.

    An interrupted run of the same spec resumes (same MLflow run, last checkpoint)."""
    started = time.monotonic()
    spec, name, namespace = job.spec, job.metadata.name, job.metadata.namespace
    check_fits(spec, ray.cluster_resources(), _node_resources())
    run_dir = settings.storage / namespace / name
    digest = spec_hash(spec)
    saved = claim_run_dir(run_dir, digest, fresh, job.metadata.uid)
    client = MlflowClient(settings.tracking_uri)
    experiment_name = spec.mlflow.experiment or name
    experiment_id = ensure_experiment(client, experiment_name, settings.artifact_root)
    created = "run_id" not in saved
    if created:
        tags = resource_tags("TrainingJob", name, namespace, job.metadata.uid)
        run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        save_state(run_dir, spec_hash=digest, run_id=run_id, uid=job.metadata.uid)
    else:
        run_id = saved["run_id"]
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        resumed_run(client, run_id)
    keep_driver_log(settings.tracking_uri, run_id)
    resolved = resolved_spec(spec)
    if created:
        log_params(client, run_id, flatten(resolved))
        log_yaml(client, run_id, job.model_dump(mode="json", by_alias=True, exclude_none=True), "trainingjob.yaml")
    trainer = build_trainer(
        spec, spec.objective, name="train", storage=run_dir,
        tracking_uri=settings.tracking_uri, run_id=run_id, data_dir=settings.data_dir,
        wandb=with_run(wandb_settings(spec, local_dir(run_dir) / "wandb"), run_id, name, flatten(resolved)),
    )
    error: str | None = None
    try:
        in_background_thread(trainer.fit)
    except KeyboardInterrupt:
        # SIGINT/SIGTERM (interrupt.py): the checkpoints so far are kept; the same command resumes.
        client.set_tag(run_id, TAG_STATE, "interrupted")
        client.set_tag(run_id, TAG_INTERRUPTED, signal_name(received_signal() or signal.SIGINT))
        set_final(client, run_id, RunStatus.to_string(RunStatus.KILLED))
        return JobResult(
            name=name, namespace=namespace, tracking_uri=settings.tracking_uri, experiment_id=experiment_id,
            experiment_name=experiment_name, run_id=run_id, state="interrupted",
            epochs=len(metric_history(client, run_id, "epoch")), metric=None, metrics={}, model_uri=None,
            error=None, wall_seconds=time.monotonic() - started, interrupted=received_signal(),
        )
    except Exception as exc:  # Ray wraps worker errors; report the root cause
        error = root_cause(exc)
    with finishing_up():
        return _finish_training_job(job, settings, client, experiment_id, run_id, error, started)


def _finish_training_job(job: TrainingJob, settings: RunSettings, client: MlflowClient, experiment_id: str,
                         run_id: str, error: str | None, started: float) -> JobResult:
    """After the training: the best model logged, the run ended with its state."""
    spec, name, namespace = job.spec, job.metadata.name, job.metadata.namespace
    run_dir = settings.storage / namespace / name
    experiment_name = spec.mlflow.experiment or name
    metric, mode = spec.objective.metric, spec.objective.mode
    history = {key: metric_history(client, run_id, key) for key in REPORTED_METRICS if key != "lr"}
    epochs = len(history.get(metric, []))
    values = [v for _, v in history.get(metric, []) if math.isfinite(v)]
    best_value = (max(values) if mode == "max" else min(values)) if values else None
    model_uri = attributions_uri = None
    if error is None:
        train_dir = run_dir / "train"
        record = train_result(train_dir)  # read once: what to prune, and the best checkpoint
        prune_unrecorded_checkpoints(train_dir, record)
        model = best_checkpoint_model(record, metric, mode)
        if model is not None:
            pending = PendingAttributions(model, trial_part(spec), settings.data_dir, settings.tracking_uri, run_id) \
                if spec.interpretability.enabled and received_signal() is None else None  # not when asked to stop
            model_uri = log_model(settings.tracking_uri, run_id, model, input_shape(model),
                                  spec.mlflow.registered_model_name, model_card(model, spec.data.dataset))
            artifact = pending.artifact() if pending is not None else None
            attributions_uri = f"runs:/{run_id}/{artifact}" if artifact else None
        if best_value is not None:
            client.log_metric(run_id, f"best_{metric}", best_value)
    state = "failed" if error else "succeeded"
    client.set_tag(run_id, TAG_STATE, state)
    if error:
        client.set_tag(run_id, TAG_ERROR, error[:5000])
    set_final(client, run_id, RunStatus.to_string(RunStatus.FAILED if error else RunStatus.FINISHED))
    save_state(run_dir, finished=True)
    last = {key: values_[-1][1] for key, values_ in history.items() if values_}
    return JobResult(
        name=name, namespace=namespace, tracking_uri=settings.tracking_uri, experiment_id=experiment_id,
        experiment_name=experiment_name, run_id=run_id, state=state, epochs=epochs, metric=best_value,
        metrics=last, model_uri=model_uri, error=error, wall_seconds=time.monotonic() - started,
        attributions_uri=attributions_uri,
    )


def local_dir(storage: Storage) -> Path:
    """A local directory for what must stay on a disk (W&B's files): the storage's own directory, or
    for an object store one under the system's temporary directory named after the run."""
    local = storage.local_path()
    if local is not None:
        return local
    return Path(tempfile.gettempdir()) / "raylight" / storage.path


def with_run(wandb: dict[str, Any] | None, run_id: str, name: str, config: dict[str, Any]) -> dict[str, Any] | None:
    """W&B settings for one run: its id is the MLflow run's, so a resumed run continues it."""
    return {**wandb, "run_id": run_id, "name": name, "config": config} if wandb else None


def _node_resources() -> list[dict[str, Any]]:
    return [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
