"""A running sweep's progress in MLflow as it happens, not only when it ends.

The sweep driver keeps its parent run's `raylight.progress` tag (the api's SweepProgress: trial
counts by state, best so far) current, and ends each trial's child run with its state as the
trial ends. The operator reads that one tag by run id; the MLflow UI shows stopped trials as
finished while the sweep goes on.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from ray import tune

from raylight.api import BestTrial, SweepProgress, TrialCounts
from raylight.api.tags import TAG_ERROR, TAG_PROGRESS

from ..tracking.mlflow_runs import TAG_STATE, TAG_STOPPED_EARLY, TAG_TRIAL_ID, find_run, set_final

log = logging.getLogger(__name__)
_FINAL_STATUS = {"succeeded": "FINISHED", "stopped_early": "FINISHED", "failed": "FAILED"}


def trial_error(trial: Any) -> str:
    """The last line of a failed trial's error file (its root cause)."""
    path = getattr(trial, "error_file", None)
    if path and Path(path).exists():
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
        return lines[-1][:500] if lines else "unknown error"
    return "trial failed (no error file)"


def trial_state(trial: Any, max_t: int) -> str:
    """A Tune trial's state as the api counts it (a trial that ended before maxT was stopped early)."""
    if trial.status == "TERMINATED":
        epochs = int((trial.last_result or {}).get("epochs", 0) or 0)
        return "succeeded" if epochs >= max_t else "stopped_early"
    return {"ERROR": "failed", "RUNNING": "running"}.get(trial.status, "pending")


def write_progress(client: MlflowClient, parent_run_id: str, progress: SweepProgress) -> None:
    client.set_tag(parent_run_id, TAG_PROGRESS, progress.model_dump_json(by_alias=True, exclude_none=True))


class ProgressReporter(tune.Callback):
    """A Tune callback in the sweep driver; MLflow failures are logged, never raised into Tune."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, num_samples: int, max_t: int,
                 metric: str, mode: str) -> None:
        self.client = MlflowClient(tracking_uri)
        self.experiment_id, self.parent_run_id = experiment_id, parent_run_id
        self.num_samples, self.max_t, self.metric, self.mode = num_samples, max_t, metric, mode
        self._ended: dict[str, str] = {}  # trial id -> final state, as this driver saw it end
        self._written: SweepProgress | None = None

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._report(trials)

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        self._report(trials)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        epochs = int((trial.last_result or {}).get("epochs", 0) or 0)
        self._end(trial, "succeeded" if epochs >= self.max_t else "stopped_early")
        self._report(trials)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._end(trial, "failed", trial_error(trial))
        self._report(trials)

    def progress(self, trials: list[Any]) -> SweepProgress:
        counts = TrialCounts(total=self.num_samples, pending=max(0, self.num_samples - len(trials)))
        best: BestTrial | None = None
        for trial in trials:
            state = self._ended.get(trial.trial_id) or trial_state(trial, self.max_t)
            setattr(counts, state, getattr(counts, state) + 1)
            value = ((trial.metric_analysis or {}).get(self.metric) or {}).get(self.mode)
            if value is None or not math.isfinite(float(value)):
                continue
            if best is None or (float(value) > best.metric if self.mode == "max" else float(value) < best.metric):
                best = BestTrial(id=trial.trial_id, metric=float(value), config=dict(trial.config))
        return SweepProgress(trials=counts, best_trial=best)


    def _report(self, trials: list[Any]) -> None:
        progress = self.progress(trials)
        if progress == self._written:
            return
        try:
            write_progress(self.client, self.parent_run_id, progress)
            self._written = progress
        except Exception as exc:  # MLflow down: the sweep goes on, the next report tries again
            log.warning("could not update the sweep's progress in MLflow: %s", exc)

    def _end(self, trial: Any, state: str, error: str | None = None) -> None:
        self._ended[trial.trial_id] = state
        try:
            run_id = find_run(self.client, self.experiment_id, {TAG_TRIAL_ID: trial.trial_id,
                                                                "mlflow.parentRunId": self.parent_run_id})
            if run_id is None:
                return  # the trial failed before it opened its run
            self.client.set_tag(run_id, TAG_STATE, state)
            self.client.set_tag(run_id, TAG_STOPPED_EARLY, str(state == "stopped_early").lower())
            if error:
                self.client.set_tag(run_id, TAG_ERROR, error)
            set_final(self.client, run_id, _FINAL_STATUS[state])
        except Exception as exc:
            log.warning("could not end the MLflow run of trial %s: %s", trial.trial_id, exc)
