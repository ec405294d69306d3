"""A TuneSweep: Ray Tune over a driver function that builds one TorchTrainer per trial, ASHA."""

from __future__ import annotations

import functools
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from raylight.api import BestTrial, Distribution, SweepProgress, TrialCounts, TrialSpec, TuneSweep, apply_overrides
from raylight.api.tags import TAG_ERROR, TAG_INTERRUPTED, TAG_PARENT_RUN_ID

from . import timeline
from .attributions import PendingAttributions
from .interrupt import finishing_up, received_signal, say_it_finishes, signal_name, tune_stops_gracefully
from .resources import concurrency_that_fits, state_api_problem, trains_in_trial, trial_resources
from .run_logs import keep_driver_log
from .runs import (
    RunSettings,
    best_checkpoint_model,
    claim_run_dir,
    local_dir,
    prune_unrecorded_checkpoints,
    resumed_run,
    save_state,
    set_final,
    spec_hash,
    train_result,
    with_run,
)
from .storage import Storage
from .sweep_progress import ProgressReporter, trial_error, trial_state, write_progress
from .timeline_hooks import TrialEvents
from .tracking import (
    TAG_BEST_TRIAL_ID,
    TAG_KIND,
    TAG_NAME,
    TAG_STATE,
    TAG_STOPPED_EARLY,
    TAG_TRIAL_ID,
    ensure_experiment,
    find_or_create_run,
    find_run,
    flatten,
    log_model,
    log_params,
    log_yaml,
    resolved_spec,
    resource_tags,
    wandb_settings,
)
from .train import build_trainer, fit_in_trial, input_shape, load_checkpoint_model, model_card, worker_config


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
    prune_unrecorded_checkpoints(trial_dir, train_result(trial_dir))


@dataclass
class TrialOutcome:
    trial_id: str
    state: str  # succeeded | stopped_early | failed | running | pending
    epochs: int
    metric: float | None
    config: dict[str, Any]
    run_id: str | None = None
    error: str | None = None


@dataclass
class SweepResult:
    name: str
    namespace: str
    tracking_uri: str
    experiment_id: str
    experiment_name: str
    parent_run_id: str
    trials: list[TrialOutcome] = field(default_factory=list)
    best: TrialOutcome | None = None
    model_uri: str | None = None
    attributions_uri: str | None = None  # the best trial's integrated-gradients picture
    resumed: bool = False
    interrupted: int | None = None  # the signal that stopped it before it ended (resume: run it again)
    max_concurrent_trials: int = 0
    wall_seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        counts = {"total": len(self.trials)}
        for state in ("succeeded", "stopped_early", "failed", "running", "pending"):
            counts[state] = sum(1 for t in self.trials if t.state == state)
        return counts


def run_sweep(
    sweep: TuneSweep, settings: RunSettings, callbacks: list[tune.Callback] | None = None, fresh: bool = False
) -> SweepResult:
    """Run (or resume) a sweep on the connected Ray cluster and report it to MLflow."""
    started = time.monotonic()
    timeline.mark("sweep_start", trial="-")
    spec, name, namespace = sweep.spec, sweep.metadata.name, sweep.metadata.namespace
    problem = state_api_problem()
    if problem:
        raise RuntimeError(
            f"{problem}. Ray Train frees the resources of trials that ASHA stops through Ray's State API "
            "(served by the dashboard, from ray[default]); without it the sweep would hang"
        )
    concurrency = concurrency_that_fits(spec.trial, ray.cluster_resources(), spec.max_concurrent_trials,
                                        spec.num_samples)
    experiment_dir = settings.storage / namespace / name
    digest = spec_hash(sweep.spec)
    state = claim_run_dir(experiment_dir, digest, fresh, sweep.metadata.uid)
    resumable = bool(state) and tune.Tuner.can_restore(experiment_dir.path,
                                                        storage_filesystem=experiment_dir.ray_filesystem)

    client = MlflowClient(settings.tracking_uri)
    experiment_name = spec.mlflow.experiment or name
    experiment_id = ensure_experiment(client, experiment_name, settings.artifact_root)
    if state.get("parent_run_id"):
        parent_run_id = state["parent_run_id"]
        client.update_run(parent_run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        resumed_run(client, parent_run_id)
    else:
        parent = client.create_run(
            experiment_id, run_name=name,
            tags=resource_tags("TuneSweep", name, namespace, sweep.metadata.uid),
        )
        parent_run_id = parent.info.run_id
        scheduler_desc = spec.scheduler.model_dump(mode="json", by_alias=True, exclude_none=True)
        log_params(client, parent_run_id, {
            **{f"search_space.{k}": json.dumps(v.wire()) for k, v in spec.search_space.items()},
            **flatten(scheduler_desc, "scheduler."),
            "scheduler.maxT": spec.max_t(),
            "objective.metric": spec.objective.metric,
            "objective.mode": spec.objective.mode,
            "num_samples": spec.num_samples,
            "max_concurrent_trials": concurrency,
        })
        log_yaml(client, parent_run_id, sweep.model_dump(mode="json", by_alias=True, exclude_none=True),
                 "tunesweep.yaml")
        save_state(experiment_dir, spec_hash=digest, parent_run_id=parent_run_id, uid=sweep.metadata.uid)

    keep_driver_log(settings.tracking_uri, parent_run_id)
    context = TrialContext(
        sweep_name=name,
        base_trial=spec.trial.wire(),
        objective=spec.objective.model_dump(),
        tracking_uri=settings.tracking_uri,
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        storage_uri=(experiment_dir / "trials").uri,
        data_dir=settings.data_dir,
        wandb=wandb_settings(spec, local_dir(experiment_dir) / "wandb", group=name),
    )
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context),
                                    functools.partial(trial_resources, base_trial=spec.trial.wire()))
    metric, mode = spec.objective.metric, spec.objective.mode
    reporter = ProgressReporter(settings.tracking_uri, experiment_id, parent_run_id, spec.num_samples, spec.max_t(),
                                metric, mode)
    callbacks = [*(callbacks or []), reporter, *([TrialEvents()] if timeline.enabled() else [])]
    if resumable:
        tuner = tune.Tuner.restore(experiment_dir.path, trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=False, storage_filesystem=experiment_dir.ray_filesystem)
    else:
        if spec.scheduler.asha is not None:
            asha = spec.scheduler.asha
            scheduler: Any = ASHAScheduler(time_attr="epochs", max_t=spec.max_t(), grace_period=asha.grace_period,
                                           reduction_factor=asha.reduction_factor)
        else:
            scheduler = FIFOScheduler()
        tuner = tune.Tuner(
            trainable,
            param_space={path: to_tune(dist) for path, dist in spec.search_space.items()},
            tune_config=tune.TuneConfig(
                metric=metric, mode=mode, num_samples=spec.num_samples, scheduler=scheduler,
                # The concurrency cap goes on the generator: Tune ignores max_concurrent_trials
                # when it is given a generator instance.
                search_alg=tune.search.BasicVariantGenerator(random_state=spec.search_seed,
                                                             max_concurrent=concurrency),
                # A trial that trains in its own process hands that process, torch and the data
                # already loaded, to the next trial: seconds of imports saved per trial.
                reuse_actors=trains_in_trial(spec.trial),
            ),
            run_config=tune.RunConfig(
                name=name, storage_path=experiment_dir.parent.path,
                storage_filesystem=experiment_dir.parent.ray_filesystem, callbacks=callbacks, verbose=0,
                # Trials that train in their own process are Tune's to checkpoint and retry; the
                # others' worker groups are Ray Train's (their TorchTrainer has the same settings).
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=spec.trial.fault_tolerance.checkpoints_to_keep,
                    checkpoint_score_attribute=metric, checkpoint_score_order=mode),
                failure_config=tune.FailureConfig(
                    max_failures=spec.trial.fault_tolerance.max_failures if trains_in_trial(spec.trial) else 0),
            ),
        )
    if resumable:
        # Tuner.restore takes no callbacks; the progress display and MLflow's live progress are
        # worth reaching in for.
        local = getattr(tuner, "_local_tuner", None)
        if local is not None:
            local._run_config.callbacks = callbacks
    # Tune saves its state whenever a trial has checkpointed checkpointsToKeep times since the last
    # save (the state must not name a deleted checkpoint): every epoch or two here, as it should,
    # with a warning each time that would fill the log.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    with tune_stops_gracefully():
        tuner.fit()
    timeline.mark("tune_end", trial="-")
    interrupted = received_signal()  # during the trials: the sweep is not over
    with finishing_up():
        return _finish_sweep(sweep, settings, client, experiment_id, parent_run_id, resumable, concurrency,
                             interrupted, started)


def _finish_sweep(sweep: TuneSweep, settings: RunSettings, client: MlflowClient, experiment_id: str,
                  parent_run_id: str, resumed: bool, concurrency: int, interrupted: int | None,
                  started: float) -> SweepResult:
    """After Tune: the trials' outcomes, their runs ended, then the best model and the final counts
    (or, for an interrupted sweep, its parent run KILLED, waiting for the resume)."""
    spec, name, namespace = sweep.spec, sweep.metadata.name, sweep.metadata.namespace
    experiment_dir = settings.storage / namespace / name
    experiment_name = spec.mlflow.experiment or name
    metric, mode = spec.objective.metric, spec.objective.mode
    result = SweepResult(name=name, namespace=namespace, tracking_uri=settings.tracking_uri,
                         experiment_id=experiment_id, experiment_name=experiment_name,
                         parent_run_id=parent_run_id, resumed=resumed, max_concurrent_trials=concurrency)
    # Read once: the outcomes and, for trials that trained in their own process, the best checkpoints.
    analysis = tune.ExperimentAnalysis(experiment_dir.path, default_metric=metric, default_mode=mode,
                                       storage_filesystem=experiment_dir.ray_filesystem)
    result.trials = _outcomes(analysis, spec.max_t(), metric, mode)
    timeline.mark("outcomes_read", trial="-")
    _finish_child_runs(client, experiment_id, parent_run_id, result.trials, spec.max_t(), metric, mode)
    timeline.mark("child_runs_ended", trial="-")
    if interrupted is not None and every_trial_ended(result.trials, spec.num_samples):
        # The signal came after the last trial had ended, while Tune wrapped up: nothing is left to
        # resume, so the sweep finishes its record (best model, final counts) as finishing_up does.
        say_it_finishes()
        interrupted = None
    result.interrupted = interrupted
    if interrupted is not None:
        # Stopped by SIGINT/SIGTERM: Tune kept the state to resume from; the sweep is not over,
        # so no best model and no final counts, and the parent run waits (KILLED) for the resume.
        write_progress(client, parent_run_id, _final_progress(result, spec.num_samples))
        client.set_tag(parent_run_id, TAG_INTERRUPTED, signal_name(interrupted))
        set_final(client, parent_run_id, "KILLED")
        result.wall_seconds = time.monotonic() - started
        return result
    scored = [t for t in result.trials if t.metric is not None and math.isfinite(t.metric)]
    if scored:
        best = (max if mode == "max" else min)(scored, key=lambda t: t.metric or 0.0)
        result.best = best
        client.log_metric(parent_run_id, f"best_{metric}", float(best.metric or 0.0))
        client.set_tag(parent_run_id, TAG_BEST_TRIAL_ID, best.trial_id)
        if best.run_id:
            client.set_tag(parent_run_id, "raylight.best_run_id", best.run_id)
        log_params(client, parent_run_id, {f"best.{k}": v for k, v in best.config.items()})
        model = _trial_model(experiment_dir, analysis, best.trial_id, metric, mode)
        timeline.mark("best_model_loaded", trial="-")
        if model is not None:
            pending = _start_attributions(result, model, spec, experiment_dir, analysis, settings, metric, mode)
            result.model_uri = log_model(settings.tracking_uri, parent_run_id, model, input_shape(model),
                                         spec.mlflow.registered_model_name,
                                         model_card(model, spec.trial.data.dataset))
            timeline.mark("model_logged", trial="-")
            for trial, attributions in pending:
                artifact = attributions.artifact()
                if artifact and trial is result.best:
                    result.attributions_uri = f"runs:/{trial.run_id}/{artifact}"
    timeline.mark("best_model_logged", trial="-")
    counts = result.counts()
    for key, value in counts.items():
        client.log_metric(parent_run_id, f"trials_{key}", value)
    write_progress(client, parent_run_id, _final_progress(result, spec.num_samples))
    failed_all = counts["failed"] == counts["total"]
    first_error = next((t.error for t in result.trials if t.error), None)
    if failed_all and first_error:  # the sweep's root cause, where the operator reads it
        client.set_tag(parent_run_id, TAG_ERROR, first_error)
    set_final(client, parent_run_id, "FAILED" if failed_all else "FINISHED")
    save_state(experiment_dir, finished=True)
    timeline.mark("sweep_end", trial="-")
    result.wall_seconds = time.monotonic() - started
    return result


def _start_attributions(result: SweepResult, best_model: Any, spec: Any, experiment_dir: Storage, analysis: Any,
                        settings: RunSettings, metric: str, mode: str) -> list[tuple[TrialOutcome, Any]]:
    """Integrated-gradients pictures, started: the best trial's, and every finished trial's if asked."""
    wanted = spec.trial.interpretability
    if not wanted.enabled or result.best is None or received_signal() is not None:
        return []  # (pictures take a while: not when asked to stop)
    chosen = [result.best]
    if wanted.all_trials:
        chosen += [t for t in result.trials
                   if t is not result.best and t.state in ("succeeded", "stopped_early")]
    pending = []
    for trial in chosen:
        model = best_model if trial is result.best else \
            _trial_model(experiment_dir, analysis, trial.trial_id, metric, mode)
        if model is None or not trial.run_id:
            continue
        trial_spec = TrialSpec.model_validate(apply_overrides(spec.trial.wire(), trial.config))
        pending.append((trial, PendingAttributions(model, trial_spec, settings.data_dir, settings.tracking_uri,
                                                   trial.run_id)))
    return pending


def _trial_model(experiment_dir: Storage, analysis: Any, trial_id: str, metric: str, mode: str) -> Any:
    """The model at a trial's best checkpoint: kept by Ray Train for a trial that drove a worker
    group, by Tune for one that trained in its own process (None if it kept none)."""
    model = best_checkpoint_model(train_result(experiment_dir / "trials" / f"trial-{trial_id}"), metric, mode)
    if model is not None:
        return model
    trial = next((t for t in analysis.trials if t.trial_id == trial_id), None)
    checkpoint = analysis.get_best_checkpoint(trial, metric, mode) if trial is not None else None
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return load_checkpoint_model(directory)


def _outcomes(analysis: Any, max_t: int, metric: str, mode: str) -> list[TrialOutcome]:
    outcomes = []
    for trial in analysis.trials:
        last = trial.last_result or {}
        epochs = int(last.get("epochs", 0) or 0)
        best_value: float | None = None
        if metric in (trial.metric_analysis or {}):
            best_value = float(trial.metric_analysis[metric][mode])
        error = trial_error(trial) if trial.status == "ERROR" else None
        outcomes.append(TrialOutcome(trial.trial_id, trial_state(trial, max_t), epochs, best_value,
                                     dict(trial.config), error=error))
    return sorted(outcomes, key=lambda t: t.trial_id)


def every_trial_ended(trials: list[TrialOutcome], num_samples: int) -> bool:
    """Whether all of a sweep's trials were made and ended (none cut short, none left to start)."""
    return len(trials) >= num_samples and all(t.state not in ("running", "pending") for t in trials)


def _final_progress(result: SweepResult, num_samples: int) -> SweepProgress:
    """The sweep's last progress: the states as corrected from MLflow, the chosen best trial."""
    counts = result.counts()
    best = result.best
    return SweepProgress(
        trials=TrialCounts(total=num_samples, **{k: v for k, v in counts.items() if k != "total"}),
        best_trial=BestTrial(id=best.trial_id, metric=float(best.metric), config=best.config)
        if best is not None and best.metric is not None else None,
    )


def _finish_child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str,
                       trials: list[TrialOutcome], max_t: int, metric: str, mode: str) -> None:
    for trial in trials:
        opened = find_run(client, experiment_id, {TAG_TRIAL_ID: trial.trial_id, TAG_PARENT_RUN_ID: parent_run_id})
        if opened is None and trial.state in ("pending", "running"):
            # Cut before it opened its run (the node test suspended one so): the resumed trial
            # opens it; one made here, without the trial's other tags, would be a second run.
            continue
        run_id, _ = find_or_create_run(
            client, experiment_id, run_name=trial.trial_id,
            tags={TAG_TRIAL_ID: trial.trial_id}, parent_run_id=parent_run_id,
        )
        trial.run_id = run_id
        # A stop decision reaches the workers asynchronously: an epoch may finish after it.
        logged = [m.step for m in client.get_metric_history(run_id, "epoch")]
        if logged and max(logged) > trial.epochs and trial.state in ("succeeded", "stopped_early"):
            # Tune lost some of this trial's results (its driver was killed before they were
            # written); MLflow, written by the workers, has them all. A stopped trial reaches
            # maxT there only if it was stopped one epoch before it.
            trial.state = "succeeded" if max(logged) >= max_t else "stopped_early"
            history = [m.value for m in client.get_metric_history(run_id, metric)]
            if history and trial.metric is None:
                trial.metric = max(history) if mode == "max" else min(history)
        trial.epochs = max([trial.epochs, *logged])
        client.set_tag(run_id, TAG_STATE, trial.state)
        client.set_tag(run_id, TAG_STOPPED_EARLY, str(trial.state == "stopped_early").lower())
        if trial.error:
            client.set_tag(run_id, TAG_ERROR, trial.error)
        final = {"failed": "FAILED", "running": "KILLED", "pending": "KILLED"}.get(trial.state, "FINISHED")
        set_final(client, run_id, final)
