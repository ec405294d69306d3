"""A sweep's trials once Tune has returned: their outcomes read back (and corrected from MLflow,
which the workers write), their child runs ended, the sweep's final progress and best model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlflow.tracking import MlflowClient

from raylight.api import BestTrial, SweepProgress, TrialCounts
from raylight.api.tags import TAG_ERROR, TAG_PARENT_RUN_ID

from ..runtime.errors import CheckpointsUnreadable
from ..runtime.storage import Storage
from ..tracking.mlflow_runs import (
    TAG_STATE,
    TAG_STOPPED_EARLY,
    TAG_TRIAL_ID,
    find_or_create_run,
    find_run,
    set_final,
)
from ..training.checkpoints import best_checkpoint_model, train_result
from ..training.workers import load_checkpoint_model
from .progress import trial_error, trial_state


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
    error: str | None = None  # why a sweep whose trials ran failed anyway (its best model cannot be had)

    def counts(self) -> dict[str, int]:
        counts = {"total": len(self.trials)}
        for state in ("succeeded", "stopped_early", "failed", "running", "pending"):
            counts[state] = sum(1 for t in self.trials if t.state == state)
        return counts


def trial_model(experiment_dir: Storage, analysis: Any, trial_id: str, metric: str, mode: str) -> Any:
    """The model at a trial's best checkpoint: kept by Ray Train for a trial that drove a worker
    group, by Tune for one that trained in its own process (None if it kept none)."""
    unreadable: CheckpointsUnreadable | None = None
    try:
        model = best_checkpoint_model(train_result(experiment_dir / "trials" / f"trial-{trial_id}"), metric, mode)
    except CheckpointsUnreadable as exc:  # Tune may keep the trial's checkpoints too: look there first
        model, unreadable = None, exc
    if model is not None:
        return model
    trial = next((t for t in analysis.trials if t.trial_id == trial_id), None)
    checkpoint = analysis.get_best_checkpoint(trial, metric, mode) if trial is not None else None
    if checkpoint is None:
        if unreadable is not None:
            raise unreadable
        return None
    with checkpoint.as_directory() as directory:
        return load_checkpoint_model(directory)


def read_outcomes(analysis: Any, max_t: int, metric: str, mode: str) -> list[TrialOutcome]:
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


def final_progress(result: SweepResult, num_samples: int) -> SweepProgress:
    """The sweep's last progress: the states as corrected from MLflow, the chosen best trial."""
    counts = result.counts()
    best = result.best
    return SweepProgress(
        trials=TrialCounts(total=num_samples, **{k: v for k, v in counts.items() if k != "total"}),
        best_trial=BestTrial(id=best.trial_id, metric=float(best.metric), config=best.config)
        if best is not None and best.metric is not None else None,
    )


def finish_child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str,
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
