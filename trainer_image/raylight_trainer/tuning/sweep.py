"""A TuneSweep: Ray Tune over a driver function that builds one TorchTrainer per trial, ASHA."""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any

import ray
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from raylight.api import TrialSpec, TuneSweep, apply_overrides
from raylight.api.tags import TAG_ERROR, TAG_INTERRUPTED

from ..runtime import timeline
from ..runtime.errors import CheckpointsUnreadable
from ..runtime.interrupt import finishing_up, received_signal, say_it_finishes, signal_name, tune_stops_gracefully
from ..runtime.storage import Storage
from ..runtime.timeline_hooks import TrialEvents
from ..tracking.attributions import PendingAttributions
from ..tracking.logs import keep_driver_log
from ..tracking.mlflow_runs import (
    TAG_BEST_TRIAL_ID,
    ensure_experiment,
    flatten,
    log_model,
    log_params,
    log_yaml,
    resource_tags,
    resumed_run,
    set_final,
    wandb_settings,
)
from ..training.resources import concurrency_that_fits, state_api_problem, trains_in_trial, trial_resources
from ..training.run_state import RunSettings, claim_run_dir, local_dir, save_state, spec_hash
from ..training.workers import (
    input_shape,
    model_card,
)
from .old_paths import register_old_paths
from .outcomes import (
    SweepResult,
    TrialOutcome,
    every_trial_ended,
    final_progress,
    finish_child_runs,
    read_outcomes,
    trial_model,
)
from .progress import ProgressReporter, write_progress
from .trial import TrialContext, run_trial, to_tune


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
    state = claim_run_dir(experiment_dir, spec_hash(spec), fresh, sweep.metadata.uid)
    resumable = bool(state) and tune.Tuner.can_restore(experiment_dir.path,
                                                        storage_filesystem=experiment_dir.ray_filesystem)

    client = MlflowClient(settings.tracking_uri)
    experiment_name = spec.mlflow.experiment or name
    experiment_id = ensure_experiment(client, experiment_name, settings.artifact_root)
    parent_run_id = _open_parent_run(sweep, client, experiment_id, experiment_dir, state, concurrency)
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
    reporter = ProgressReporter(settings.tracking_uri, experiment_id, parent_run_id, spec.num_samples, spec.max_t(),
                                spec.objective.metric, spec.objective.mode)
    callbacks = [*(callbacks or []), reporter, *([TrialEvents()] if timeline.enabled() else [])]
    tuner = _tuner(sweep, experiment_dir, trainable, callbacks, concurrency, resumable)
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


def _open_parent_run(sweep: TuneSweep, client: MlflowClient, experiment_id: str, experiment_dir: Storage,
                     state: dict[str, Any], concurrency: int) -> str:
    """The sweep's parent run: the interrupted one taken up again, or a new one with the sweep's
    search space, scheduler and objective as params (its id saved in the run directory's state)."""
    spec, name = sweep.spec, sweep.metadata.name
    if state.get("parent_run_id"):
        parent_run_id: str = state["parent_run_id"]
        client.update_run(parent_run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        resumed_run(client, parent_run_id)
        return parent_run_id
    parent = client.create_run(experiment_id, run_name=name,
                               tags=resource_tags("TuneSweep", name, sweep.metadata.namespace, sweep.metadata.uid))
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
    log_yaml(client, parent_run_id, sweep.model_dump(mode="json", by_alias=True, exclude_none=True), "tunesweep.yaml")
    save_state(experiment_dir, spec_hash=spec_hash(spec), parent_run_id=parent_run_id, uid=sweep.metadata.uid)
    return parent_run_id


def replace_restored_callbacks(tuner: tune.Tuner, callbacks: list[tune.Callback]) -> None:
    """Give a restored Tuner this run's callbacks: `Tuner.restore` takes none (Ray 2.60), and without
    them a resumed sweep loses its progress display and MLflow's live progress. There is no public
    way, so this reaches into Tune's private run config; where a Ray upgrade renamed it, the sweep
    fails here, naming what moved, instead of going on silently without its progress."""
    local = getattr(tuner, "_local_tuner", None)
    run_config = getattr(local, "_run_config", None)
    if run_config is None or not hasattr(run_config, "callbacks"):
        raise RuntimeError(
            f"cannot resume this sweep with its progress callbacks: Ray {ray.__version__}'s restored Tuner has no "
            "_local_tuner._run_config.callbacks (Raylight is tested with Ray 2.60); start it over with --fresh, "
            "or use the Ray version Raylight pins")
    run_config.callbacks = callbacks


def _tuner(sweep: TuneSweep, experiment_dir: Storage, trainable: Any, callbacks: list[tune.Callback],
           concurrency: int, resumable: bool) -> tune.Tuner:
    """Tune's tuner: restored from the experiment's saved state (the unfinished trials go on), or new."""
    spec, metric, mode = sweep.spec, sweep.spec.objective.metric, sweep.spec.objective.mode
    if resumable:
        register_old_paths()  # a state saved by an older release names its modules' old paths
        tuner = tune.Tuner.restore(experiment_dir.path, trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=False, storage_filesystem=experiment_dir.ray_filesystem)
        replace_restored_callbacks(tuner, callbacks)
        return tuner
    if spec.scheduler.asha is not None:
        asha = spec.scheduler.asha
        scheduler: Any = ASHAScheduler(time_attr="epochs", max_t=spec.max_t(), grace_period=asha.grace_period,
                                       reduction_factor=asha.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        param_space={path: to_tune(dist) for path, dist in spec.search_space.items()},
        tune_config=tune.TuneConfig(
            metric=metric, mode=mode, num_samples=spec.num_samples, scheduler=scheduler,
            # The concurrency cap goes on the generator: Tune ignores max_concurrent_trials
            # when it is given a generator instance.
            search_alg=tune.search.BasicVariantGenerator(random_state=spec.search_seed, max_concurrent=concurrency),
            # A trial that trains in its own process hands that process, torch and the data
            # already loaded, to the next trial: seconds of imports saved per trial.
            reuse_actors=trains_in_trial(spec.trial),
        ),
        run_config=tune.RunConfig(
            name=sweep.metadata.name, storage_path=experiment_dir.parent.path,
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
    result.trials = read_outcomes(analysis, spec.max_t(), metric, mode)
    timeline.mark("outcomes_read", trial="-")
    finish_child_runs(client, experiment_id, parent_run_id, result.trials, spec.max_t(), metric, mode)
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
        write_progress(client, parent_run_id, final_progress(result, spec.num_samples))
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
        try:
            model = trial_model(experiment_dir, analysis, best.trial_id, metric, mode)
        except CheckpointsUnreadable as exc:
            # The trials ended well, but without its best model the sweep must not be called succeeded.
            model, result.error = None, f"the sweep ended but its best model cannot be logged: {exc}"
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
    write_progress(client, parent_run_id, final_progress(result, spec.num_samples))
    failed_all = counts["failed"] == counts["total"]
    first_error = result.error or next((t.error for t in result.trials if t.error), None)
    if (failed_all or result.error) and first_error:  # the sweep's root cause, where the operator reads it
        client.set_tag(parent_run_id, TAG_ERROR, first_error)
    set_final(client, parent_run_id, "FAILED" if failed_all or result.error else "FINISHED")
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
            trial_model(experiment_dir, analysis, trial.trial_id, metric, mode)
        if model is None or not trial.run_id:
            continue
        trial_spec = TrialSpec.model_validate(apply_overrides(spec.trial.wire(), trial.config))
        pending.append((trial, PendingAttributions(model, trial_spec, settings.data_dir, settings.tracking_uri,
                                                   trial.run_id)))
    return pending
