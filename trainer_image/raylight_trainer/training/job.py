"""A TrainingJob: one distributed run, tracked as one MLflow run, resumed where it was interrupted."""

from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass
from typing import Any

import ray
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from raylight.api import TrainingJob
from raylight.api.tags import TAG_ERROR, TAG_INTERRUPTED

from ..runtime.errors import CheckpointsUnreadable
from ..runtime.interrupt import finishing_up, in_background_thread, received_signal, signal_name
from ..runtime.storage import Storage
from ..tracking.attributions import PendingAttributions
from ..tracking.logs import keep_driver_log
from ..tracking.mlflow_runs import (
    TAG_STATE,
    ensure_experiment,
    flatten,
    log_model,
    log_params,
    log_yaml,
    metric_history,
    resolved_spec,
    resource_tags,
    resumed_run,
    root_cause,
    set_final,
    wandb_settings,
    with_run,
)
from .checkpoints import best_checkpoint_model, prune_unrecorded_checkpoints, train_result
from .resources import check_fits
from .run_state import RunSettings, claim_run_dir, local_dir, save_state, spec_hash
from .workers import REPORTED_METRICS, build_trainer, input_shape, model_card, trial_part

log = logging.getLogger(__name__)


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
        try:
            model_uri, attributions_uri = _log_best_model(job, settings, run_id, run_dir / "train")
        except CheckpointsUnreadable as exc:
            # The training ended well, but without its model it must not be called succeeded.
            error = f"the training ended but its model cannot be logged: {exc}"
        if best_value is not None:
            client.log_metric(run_id, f"best_{metric}", best_value)
    state = "failed" if error else "succeeded"
    client.set_tag(run_id, TAG_STATE, state)
    if error:
        client.set_tag(run_id, TAG_ERROR, error[:5000])
    set_final(client, run_id, RunStatus.to_string(RunStatus.FAILED if error else RunStatus.FINISHED))
    try:
        save_state(run_dir, finished=True)
    except Exception as exc:  # the outcome is in MLflow already; a resume would only train again
        log.warning("could not mark %s finished: %s", run_dir, exc)
    last = {key: values_[-1][1] for key, values_ in history.items() if values_}
    return JobResult(
        name=name, namespace=namespace, tracking_uri=settings.tracking_uri, experiment_id=experiment_id,
        experiment_name=experiment_name, run_id=run_id, state=state, epochs=epochs, metric=best_value,
        metrics=last, model_uri=model_uri, error=error, wall_seconds=time.monotonic() - started,
        attributions_uri=attributions_uri,
    )


def _log_best_model(job: TrainingJob, settings: RunSettings, run_id: str,
                    train_dir: Storage) -> tuple[str | None, str | None]:
    """The best checkpoint's model logged (and its attributions): their URIs, None where the run kept
    no checkpoint. Raises CheckpointsUnreadable where its checkpoints cannot be read."""
    spec = job.spec
    record = train_result(train_dir)  # read once: what to prune, and the best checkpoint
    prune_unrecorded_checkpoints(train_dir, record)
    model = best_checkpoint_model(record, spec.objective.metric, spec.objective.mode)
    if model is None:
        return None, None
    pending = PendingAttributions(model, trial_part(spec), settings.data_dir, settings.tracking_uri, run_id) \
        if spec.interpretability.enabled and received_signal() is None else None  # not when asked to stop
    model_uri = log_model(settings.tracking_uri, run_id, model, input_shape(model),
                          spec.mlflow.registered_model_name, model_card(model, spec.data.dataset))
    artifact = pending.artifact() if pending is not None else None
    return model_uri, f"runs:/{run_id}/{artifact}" if artifact else None


def _node_resources() -> list[dict[str, Any]]:
    return [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
