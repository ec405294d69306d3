"""Live progress on the terminal: a trial table for sweeps, a progress bar for a TrainingJob."""

from __future__ import annotations

import threading
from typing import Any

from ray.tune import Callback
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

_STATE_STYLE = {"PENDING": "dim", "RUNNING": "cyan", "TERMINATED": "green", "ERROR": "red", "STOPPED": "yellow"}


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


class TrialTable:
    """Rendering of trial rows; kept apart from Tune so it can be tested on plain data."""

    def __init__(self, metric: str, max_t: int) -> None:
        self.metric, self.max_t = metric, max_t
        self.rows: dict[str, dict[str, Any]] = {}

    def update(self, trial_id: str, state: str, config: dict[str, Any], result: dict[str, Any] | None) -> None:
        row = self.rows.setdefault(trial_id, {"state": state, "config": config, "epochs": 0, "metric": None})
        row["state"], row["config"] = state, config
        if result:
            row["epochs"] = int(result.get("epochs", row["epochs"]) or 0)
            if self.metric in result:
                row["metric"] = float(result[self.metric])

    def render(self) -> Table:
        table = Table(title="Trials", expand=False)
        for column in ("trial", "state", "epoch", self.metric, "config"):
            table.add_column(column)
        for trial_id, row in sorted(self.rows.items()):
            state = row["state"]
            if state == "TERMINATED" and 0 < row["epochs"] < self.max_t:
                state = "STOPPED"  # ended before maxT: ASHA stopped it
            config = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in row["config"].items())
            metric = "" if row["metric"] is None else f"{row['metric']:.4f}"
            table.add_row(trial_id, Text(state, style=_STATE_STYLE.get(state, "")),
                          f"{row['epochs']}/{self.max_t}", metric, config)
        return table


class LiveTrials(Callback):
    """A Ray Tune callback that keeps a TrialTable current and redraws it live."""

    def __init__(self, table: TrialTable, console: Console) -> None:
        self.table = table
        self.live: Live | None = Live(table.render(), console=console, refresh_per_second=2, transient=False)
        self.started = False

    # Tune pickles its run config (callbacks included) into the experiment state; the live
    # display holds locks and a terminal, and only the driver's own instance draws.
    def __getstate__(self) -> dict[str, Any]:
        return {"table": self.table, "live": None, "started": False}

    def _refresh(self, trial: Any, result: dict[str, Any] | None = None) -> None:
        self.table.update(trial.trial_id, trial.status, dict(trial.config), result or trial.last_result)
        if self.live is None:
            return
        if not self.started:
            self.live.start()
            self.started = True
        self.live.update(self.table.render())

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._refresh(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._refresh(trial, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._refresh(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._refresh(trial)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for trial in trials:
            self.table.update(trial.trial_id, trial.status, dict(trial.config), trial.last_result)
        if self.live is not None and self.started:
            self.live.update(self.table.render())
            self.live.stop()


class EpochProgress:
    """A progress bar for a TrainingJob, fed by polling its MLflow run (as the operator does)."""

    def __init__(self, console: Console, tracking_uri: str, total_epochs: int, metric: str) -> None:
        self.console, self.tracking_uri, self.total, self.metric = console, tracking_uri, total_epochs, metric
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, find_run_id: Any) -> None:
        self._thread = threading.Thread(target=self._poll, args=(find_run_id,), daemon=True)
        self._thread.start()

    def _poll(self, find_run_id: Any) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.tracking_uri)
        progress = Progress(TextColumn("[bold]training"), BarColumn(),
                            TextColumn("epoch {task.completed}/{task.total}"), TextColumn("{task.fields[metric]}"),
                            TimeElapsedColumn(), console=self.console)
        task = progress.add_task("train", total=self.total, metric="")
        with progress:
            while not self._stop.wait(1.0):
                run_id = find_run_id()
                if not run_id:
                    continue
                try:
                    history = client.get_metric_history(run_id, self.metric)
                except Exception:
                    continue
                if history:
                    last = max(history, key=lambda m: m.step)
                    progress.update(task, completed=last.step, metric=f"{self.metric}={last.value:.4f}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
