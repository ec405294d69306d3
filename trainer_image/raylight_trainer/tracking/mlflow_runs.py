"""MLflow reporting: runs, params, per-epoch metrics (async), the resolved spec and the model."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import yaml
from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from raylight.api.tags import MODEL_CARD_FILE as CARD_FILE
from raylight.api.tags import MODEL_WEIGHTS_FILE as WEIGHTS_FILE
from raylight.api.tags import (  # noqa: F401  (re-exported for the trainer's modules)
    TAG_BEST_TRIAL_ID,
    TAG_INTERRUPTED,
    TAG_KIND,
    TAG_MODEL_FORMAT,
    TAG_MODEL_URI,
    TAG_NAME,
    TAG_NAMESPACE,
    TAG_STATE,
    TAG_STOPPED_EARLY,
    TAG_TRIAL_ID,
    TAG_UID,
)

log = logging.getLogger(__name__)



def resource_tags(kind: str, name: str, namespace: str, uid: str | None) -> dict[str, str]:
    """Tags that identify the run of a TrainingJob or the parent run of a TuneSweep."""
    tags = {TAG_KIND: kind, TAG_NAME: name, TAG_NAMESPACE: namespace, "mlflow.runName": name}
    return {**tags, TAG_UID: uid} if uid else tags
# MLflow caps a param value at 6000 characters and a batch at 100 params.
_PARAM_LIMIT = 6000
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000


def local_store_uri(directory: Path) -> str:
    return f"sqlite:///{(directory / 'mlflow.db').resolve()}"


def ensure_experiment(client: MlflowClient, name: str, artifact_root: Path | None = None) -> str:
    """Experiment id by name, created if missing (local stores get an absolute artifact root)."""
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        if existing.lifecycle_stage == "deleted":
            client.restore_experiment(existing.experiment_id)
        return str(existing.experiment_id)
    location = (artifact_root / name).resolve().as_uri() if artifact_root else None
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except Exception:
        # Another process created it in between.
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def resolved_spec(spec: Any) -> dict[str, Any]:
    """A run's spec as logged (params, W&B config): wire names, with the model's resolved sizes."""
    resolved: dict[str, Any] = spec.model_dump(mode="json", by_alias=True)
    resolved["model"]["resolved"] = dict(spec.model.resolved())
    return resolved


def root_cause(exc: BaseException) -> str:
    """The last line of the innermost cause: what a user needs from a wrapped (Ray) error."""
    seen = exc
    while seen.__cause__ is not None:
        seen = seen.__cause__
    text = str(seen).strip() or type(seen).__name__
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else text


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Log params once; re-logging the same values on a resumed run is a no-op."""
    existing = client.get_run(run_id).data.params
    fresh = [
        Param(key, str(value)[:_PARAM_LIMIT])
        for key, value in params.items()
        if key not in existing
    ]
    for start in range(0, len(fresh), _PARAMS_PER_BATCH):
        client.log_batch(run_id, params=fresh[start : start + _PARAMS_PER_BATCH])


def log_yaml(client: MlflowClient, run_id: str, document: dict[str, Any], name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        client.log_artifact(run_id, str(path))


def find_run(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> str | None:
    """The newest run carrying all these tags (how a resumed job finds its run again)."""
    query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
    runs = client.search_runs([experiment_id], filter_string=query, order_by=["attributes.start_time DESC"],
                              max_results=1)
    return runs[0].info.run_id if runs else None


def find_or_create_run(
    client: MlflowClient, experiment_id: str, run_name: str, tags: dict[str, str], parent_run_id: str | None = None
) -> tuple[str, bool]:
    """(run id, created) for the run with these identifying tags."""
    lookup = dict(tags)
    if parent_run_id:
        lookup[MLFLOW_PARENT_RUN_ID] = parent_run_id
    existing = find_run(client, experiment_id, lookup)
    if existing:
        client.update_run(existing, status=RunStatus.to_string(RunStatus.RUNNING))
        return existing, False
    all_tags = {**lookup, MLFLOW_RUN_NAME: run_name}
    run = client.create_run(experiment_id, tags=all_tags, run_name=run_name)
    return run.info.run_id, True


class MlflowEpochLogger(pl.Callback):
    """Logs each epoch's metrics from rank 0 without blocking the training step.

    Metrics are queued with MLflow's asynchronous logging; the queue is flushed at the end.
    """

    def __init__(self, tracking_uri: str, run_id: str, metric_names: tuple[str, ...],
                 lr_interval: str = "epoch") -> None:
        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id
        self.metric_names = metric_names
        self.lr_interval = lr_interval
        self.step_lrs: list[Metric] = []
        self.pending: list[Any] = []
        self.logged_through = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank == 0:
            # A later attempt (resumed from a checkpoint, or started over when it was cut before
            # its first checkpoint was recorded): epochs the earlier attempt had already logged are
            # trained again but not logged twice (a metric history without repeats).
            self.logged_through = int(max((m.step for m in self.client.get_metric_history(self.run_id, "epoch")),
                                          default=0))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.lr_interval != "step" or trainer.global_rank != 0:
            return
        # After the step: the rate the next step will use, keyed by the steps taken so far.
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.step_lrs.append(Metric("lr", float(lr), int(time.time() * 1000), trainer.global_step))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if trainer.global_rank != 0 or trainer.sanity_checking or epoch <= self.logged_through:
            self.step_lrs = []
            return
        now = int(time.time() * 1000)
        per_epoch = [name for name in self.metric_names if not (name == "lr" and self.lr_interval == "step")]
        metrics = [
            Metric(name, float(value), now, epoch)
            for name, value in trainer.callback_metrics.items()
            if name in per_epoch
        ]
        metrics.append(Metric("epoch", float(epoch), now, epoch))
        metrics, self.step_lrs = metrics + self.step_lrs, []
        for start in range(0, len(metrics), _METRICS_PER_BATCH):
            chunk = metrics[start : start + _METRICS_PER_BATCH]
            self.pending.append(self.client.log_batch(self.run_id, metrics=chunk, synchronous=False))

    def flush(self) -> None:
        for operation in self.pending:
            try:
                operation.wait()
            except Exception as exc:  # a lost metric must not fail training
                log.warning("MLflow logging failed: %s", exc)
        self.pending.clear()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.flush()


class WandbEpochLogger(pl.Callback):
    """Weights & Biases as a second tracker, from rank 0: the resolved config and each epoch's metrics.

    The W&B run id is the MLflow run id, so a resumed run continues the same W&B run."""

    def __init__(self, project: str, run_id: str, name: str, directory: str, mode: str = "offline",
                 entity: str | None = None, group: str | None = None, config: dict[str, Any] | None = None,
                 metric_names: tuple[str, ...] = ()) -> None:
        self.init_args: dict[str, Any] = {
            "project": project, "entity": entity, "id": run_id, "name": name, "group": group, "mode": mode,
            "dir": directory, "config": config or {}, "resume": "allow",
        }
        self.metric_names = metric_names
        self.run: Any = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        import wandb

        Path(self.init_args["dir"]).mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(**self.init_args, settings=wandb.Settings(console="off", silent=True))
        except Exception as exc:  # MLflow is the record: a W&B problem must not stop training
            log.warning("W&B is off for this run: %s", exc)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.run is None or trainer.sanity_checking:
            return
        epoch = trainer.current_epoch + 1
        values = {name: float(value) for name, value in trainer.callback_metrics.items() if name in self.metric_names}
        try:
            self.run.log({**values, "epoch": epoch}, step=epoch)
        except Exception as exc:
            log.warning("W&B logging failed: %s", exc)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.run is not None:
            # Tune ends a trial that it stops (ASHA) with SystemExit(0) raised in its report: not a failure.
            stopped = isinstance(exception, SystemExit) and not exception.code
            self.run.finish(exit_code=0 if stopped else 1)
            self.run = None


def wandb_settings(spec: Any, directory: Path, group: str | None = None) -> dict[str, Any] | None:
    """The WandbEpochLogger arguments that a spec's tracking.wandb sets (None when W&B is off);
    each run adds its own run_id, name and config."""
    wandb = spec.tracking.wandb
    if wandb is None:
        return None
    return {"project": wandb.project, "entity": wandb.entity, "mode": wandb.mode, "group": group,
            "directory": str(directory)}


def metric_history(client: MlflowClient, run_id: str, name: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))


def log_model(
    tracking_uri: str, run_id: str, model: Any, input_shape: tuple[int, ...], registered_model_name: str = "",
    metadata: dict[str, Any] | None = None,
) -> str:
    """Log a torch module as an MLflow PyTorch model (registered when a name is given); returns its
    URI (`models:/NAME/VERSION` when registered) and tags the run with it (TAG_MODEL_URI).

    The model is a torch.export graph (pt2) with a dynamic batch size: plain `mlflow` and `torch`
    load it, without Raylight's code and without unpickling anything. Its weights and card come
    with it (extra files), for fine-tuning. A network torch.export cannot export (some of timm's)
    is logged as those two files alone, and the run's tag TAG_MODEL_FORMAT says why."""
    import mlflow
    import mlflow.pytorch
    import torch

    mlflow.set_tracking_uri(tracking_uri)
    # A batch of 2: torch.export keeps a dimension of size 1 static, so the batch would be fixed.
    example = torch.zeros((2, *input_shape), dtype=torch.float32).numpy()
    client = MlflowClient(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="raylight-model-") as tmp:
        extra_files = _weights_and_card(model.cpu().eval(), metadata or {}, Path(tmp))
        with mlflow.start_run(run_id=run_id):
            try:
                info = mlflow.pytorch.log_model(
                    model,
                    name="model",
                    serialization_format="pt2",
                    input_example=example,
                    registered_model_name=registered_model_name or None,
                    metadata=metadata,
                    extra_files=extra_files,
                    # Given, not inferred: inference imports and scans every module (slow, and noisy).
                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                    # MLflow would load the model back and run the example through it: seconds at the
                    # end of every sweep, for what the tests check once (the logged model predicts).
                    validate_serving_input=False,
                )
            except Exception as exc:
                if not type(exc).__module__.startswith("torch"):
                    raise  # MLflow's own failures are not export's
                return _log_weights_only(client, run_id, extra_files, registered_model_name, root_cause(exc))
    version = getattr(info, "registered_model_version", None)
    uri = f"models:/{registered_model_name}/{version}" if registered_model_name and version else str(info.model_uri)
    client.set_tag(run_id, TAG_MODEL_URI, uri)
    client.set_tag(run_id, TAG_MODEL_FORMAT, "pt2")
    return uri


def _weights_and_card(model: Any, card: dict[str, Any], directory: Path) -> list[str]:
    import json

    from safetensors.torch import save_file

    weights = directory / WEIGHTS_FILE
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(weights))
    (directory / CARD_FILE).write_text(json.dumps(card, indent=2, default=str))
    return [str(weights), str(directory / CARD_FILE)]


def _log_weights_only(client: MlflowClient, run_id: str, files: list[str], registered_model_name: str,
                      reason: str) -> str:
    """The weights and card under the run's `model` artifacts (registered when asked): what a run
    that fine-tunes from it reads; the graph that torch.export could not make is missing."""
    for file in files:
        client.log_artifact(run_id, file, "model")
    uri = f"runs:/{run_id}/model"
    if registered_model_name:
        from mlflow.exceptions import MlflowException

        try:
            client.create_registered_model(registered_model_name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        # The version's source is the run's folder itself: mlflow.register_model(runs:/...) would
        # pick the empty logged model that the failed export left on the run instead.
        source = f"{client.get_run(run_id).info.artifact_uri}/model"
        version = client.create_model_version(registered_model_name, source, run_id=run_id).version
        uri = f"models:/{registered_model_name}/{version}"
    client.set_tag(run_id, TAG_MODEL_URI, uri)
    client.set_tag(run_id, TAG_MODEL_FORMAT, f"weights and card only: torch.export could not export the "
                   f"network ({reason[:400]})")
    log.warning("model logged as weights and card only: torch.export failed: %s", reason)
    return uri


def set_final(client: MlflowClient, run_id: str, status: str) -> None:
    client.set_terminated(run_id, status=status, end_time=int(time.time() * 1000))


def resumed_run(client: MlflowClient, run_id: str) -> None:
    """A run taken up again: no longer marked as interrupted."""
    if TAG_INTERRUPTED in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, TAG_INTERRUPTED)


def with_run(wandb: dict[str, Any] | None, run_id: str, name: str, config: dict[str, Any]) -> dict[str, Any] | None:
    """W&B settings for one run: its id is the MLflow run's, so a resumed run continues it."""
    return {**wandb, "run_id": run_id, "name": name, "config": config} if wandb else None
