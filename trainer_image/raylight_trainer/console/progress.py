"""Progress of a run: on a terminal a live trial table (sweeps) or a progress bar (TrainingJob);
elsewhere (a pod's log, a CI job, a pipe) one line per trial event and per epoch, since a live
display prints only its last frame where it cannot redraw."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from ray.tune import Callback
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from raylight.api.console import TrialTable


def _log_line(console: Console, text: str) -> None:
    console.print(f"{time.strftime('%H:%M:%S')} {text}", markup=False, highlight=False, soft_wrap=True)


class LiveTrials(Callback):
    """A Ray Tune callback that keeps a TrialTable current: redrawn live on a terminal, else one
    log line per trial event and epoch."""

    def __init__(self, table: TrialTable, console: Console) -> None:
        self.table, self.console = table, console
        self.lines = not console.is_terminal
        self.live: Live | None = None if self.lines else Live(
            table.render(), console=console, refresh_per_second=2, transient=False)
        self.started = False

    # Tune pickles its run config (callbacks included) into the experiment state; the live
    # display holds locks and a terminal, and only the driver's own instance draws.
    def __getstate__(self) -> dict[str, Any]:
        return {"table": self.table, "console": None, "lines": False, "live": None, "started": False}

    def _refresh(self, trial: Any, result: dict[str, Any] | None = None, state: str | None = None) -> None:
        # Tune calls back before it sets the trial's new status: the event says what it is.
        events = self.table.update(trial.trial_id, state or trial.status, dict(trial.config),
                                   result or trial.last_result)
        if self.lines and self.console is not None:
            for event in events:
                _log_line(self.console, event)
        if self.live is None:
            return
        if not self.started:
            self.live.start()
            self.started = True
        self.live.update(self.table.render())

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._refresh(trial, state="RUNNING")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._refresh(trial, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        from ..runtime.interrupt import received_signal

        # On Ctrl-C/SIGTERM, Tune ends the running trials after saving them as running: they resume.
        self._refresh(trial, state="INTERRUPTED" if received_signal() is not None else "TERMINATED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._refresh(trial, state="ERROR")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        from ..runtime.interrupt import received_signal

        interrupted = received_signal() is not None
        for trial in trials:
            seen = trial.trial_id in self.table.rows  # else restored from an earlier run: nothing new
            state = trial.status
            if interrupted and seen and self.table.rows[trial.trial_id]["state"] in ("RUNNING", "INTERRUPTED"):
                state = "INTERRUPTED"  # Tune saved it as running, then ended it: it resumes
            events = self.table.update(trial.trial_id, state, dict(trial.config), trial.last_result)
            for event in events if seen and self.lines and self.console is not None else []:
                _log_line(self.console, event)
        if self.live is not None and self.started:
            self.live.update(self.table.render())
            self.live.stop()
        elif self.lines and self.console is not None:
            self.console.print(self.table.render())


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
        if not self.console.is_terminal:  # a log: one line per epoch
            shown = 0
            for epoch, value in self._epochs(client, find_run_id):
                if epoch > shown:
                    shown = epoch
                    _log_line(self.console, f"epoch {epoch}/{self.total} {self.metric}={value:.4f}")
            return
        progress = Progress(TextColumn("[bold]training"), BarColumn(),
                            TextColumn("epoch {task.completed}/{task.total}"), TextColumn("{task.fields[metric]}"),
                            TimeElapsedColumn(), console=self.console)
        task = progress.add_task("train", total=self.total, metric="")
        with progress:
            for epoch, value in self._epochs(client, find_run_id):
                if epoch:
                    progress.update(task, completed=epoch, metric=f"{self.metric}={value:.4f}")

    def _epochs(self, client: Any, find_run_id: Any) -> Iterator[tuple[int, float]]:
        """(last epoch, its objective) every second until stopped, and once more then: training
        may have ended between two polls."""
        while not self._stop.wait(1.0):
            yield self._last(client, find_run_id)
        yield self._last(client, find_run_id)

    def _last(self, client: Any, find_run_id: Any) -> tuple[int, float]:
        """The run's last epoch and its objective; (0, nan) before it has one."""
        run_id = find_run_id()
        try:
            history = client.get_metric_history(run_id, self.metric) if run_id else []
        except Exception:  # MLflow briefly unreachable: the next poll catches up
            history = []
        if not history:
            return 0, float("nan")
        last = max(history, key=lambda m: m.step)
        return int(last.step), float(last.value)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
