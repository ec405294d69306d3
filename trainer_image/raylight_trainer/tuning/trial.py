"""What one Tune trial runs: its spec resolved from the sampled config, its MLflow child run, its
training (in the trial's own process, or a Ray Train worker group). Tune pickles `run_trial` and
`TrialContext` by module path (a trial's actor imports them; `old_paths` keeps a saved sweep's old paths)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from mlflow.tracking import MlflowClient
from ray import tune

from raylight.api import Distribution, TrialSpec, apply_overrides

from ..runtime import timeline
from ..runtime.errors import CheckpointsUnreadable
from ..runtime.storage import Storage
from ..tracking.mlflow_runs import (
    TAG_KIND,
    TAG_NAME,
    TAG_TRIAL_ID,
    find_or_create_run,
    flatten,
    log_params,
    log_yaml,
    resolved_spec,
    with_run,
)
from ..training.checkpoints import prune_unrecorded_checkpoints, train_result
from ..training.resources import trains_in_trial
from ..training.workers import build_trainer, fit_in_trial, worker_config

log = logging.getLogger(__name__)


def to_tune(dist: Distribution) -> Any:
    if dist.uniform is not None:
        return tune.uniform(*dist.uniform)
    if dist.loguniform is not None:
        return tune.loguniform(*dist.loguniform)
    if dist.randint is not None:
        low, high = dist.randint
        return tune.randint(low, high + 1)  # the spec's upper bound is inclusive
    assert dist.choice is not None
    return tune.choice(dist.choice)


@dataclass
class TrialContext:
    """Everything a trial needs besides its sampled config (plain data, sent to each trial)."""

    sweep_name: str
    base_trial: dict[str, Any]
    objective: dict[str, Any]
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    storage_uri: str  # where the trials' Ray Train runs keep their checkpoints: a directory or an object store
    data_dir: str | None
    wandb: dict[str, Any] | None = None  # W&B settings shared by every trial (id, name, config are per trial)


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """One Tune trial: resolve the spec, open its MLflow child run, train with Ray Train."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from raylight.api import ObjectiveSpec

    trial_id = tune.get_context().get_trial_id()
    timeline.for_trial(trial_id)
    timeline.mark_process_start("actor_process")
    timeline.mark("trial_start")
    spec = TrialSpec.model_validate(apply_overrides(context.base_trial, config))
    client = MlflowClient(context.tracking_uri)
    run_id, created = find_or_create_run(
        client, context.experiment_id, run_name=f"{context.sweep_name}-{trial_id}",
        tags={TAG_TRIAL_ID: trial_id, TAG_KIND: "Trial", TAG_NAME: context.sweep_name},
        parent_run_id=context.parent_run_id,
    )
    resolved = resolved_spec(spec)
    if created:
        log_params(client, run_id, {**flatten(resolved), **{f"sampled.{k}": v for k, v in config.items()}})
        log_yaml(client, run_id, {"spec": spec.wire(), "sampled": config}, "trial-spec.yaml")
    timeline.mark("run_opened")
    objective = ObjectiveSpec.model_validate(context.objective)
    wandb = with_run(context.wandb, run_id, f"{context.sweep_name}-{trial_id}", {**flatten(resolved), **config})
    timeline.mark("fit_called")
    if trains_in_trial(spec):
        fit_in_trial(worker_config(spec, objective, tracking_uri=context.tracking_uri, run_id=run_id,
                                   data_dir=context.data_dir, wandb=wandb, extra={"trial": trial_id}))
        return
    storage = Storage(context.storage_uri)
    trainer = build_trainer(
        spec, objective, name=f"trial-{trial_id}", storage=storage,
        tracking_uri=context.tracking_uri, run_id=run_id, data_dir=context.data_dir,
        callbacks=[TuneReportCallback()], wandb=wandb, extra={"trial": trial_id},
    )
    trainer.fit()
    trial_dir = storage / f"trial-{trial_id}"
    try:
        prune_unrecorded_checkpoints(trial_dir, train_result(trial_dir))
    except CheckpointsUnreadable as exc:
        # Housekeeping only: the sweep reads the best trial's checkpoints again at its end, and
        # fails there, naming the path, if they still cannot be read.
        log.warning("trial %s: its stray checkpoints stay: %s", trial_id, exc)
