"""What the `raylight` command prints and takes that both its halves share: the exit codes, how a
manifest's errors print, the options of `raylight run` (the trainer image's entrypoint takes the same)
and the trial table. Here, not in the trainer, so that the cluster commands and the operator run on a
base install (`pip install raylight`: no torch, no Ray) and `raylight run` can say what is missing."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .cluster import quantity_bytes
from .manifest import SpecError

EXIT_OK, EXIT_FAILED = 0, 1
EXIT_TIMEOUT = 3
"""`raylight wait` gave up before the run ended."""


def print_errors(console: Console, errors: list[SpecError]) -> None:
    for error in errors:
        console.print(f"[red]error[/red] {escape(str(error))}", soft_wrap=True)


def add_run_arguments(run: argparse.ArgumentParser) -> None:
    """The options of `raylight run` (and of the trainer image's entrypoint, which takes the same)."""
    run.add_argument("file", help="manifest YAML (the same file kubectl apply takes)")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlflow.db here)")
    run.add_argument("--data-dir", help="directory that relative data.path values are resolved against")
    run.add_argument("--storage-path", help="checkpoints and sweep state: a directory, or s3://BUCKET/PREFIX "
                     "(credentials from AWS_* variables) or gs://BUCKET/PREFIX (default: ./raylight_results)")
    run.add_argument("--data-cache", help="where datasets read from object storage are copied "
                     "(default: ~/.cache/raylight/datasets)")
    run.add_argument("--data-cache-size", type=_quantity_argument,
                     help="the most those copies may hold, e.g. 20Gi (default: 50Gi); the least recently used go")
    run.add_argument("--num-cpus", type=int, help="CPUs for the local Ray instance (default: all)")
    run.add_argument("--output", "-o", choices=("text", "json"), default="text",
                     help="json: a machine-readable summary on stdout")
    run.add_argument("--fresh", action="store_true", help="start over instead of resuming an interrupted run")
    run.add_argument("--verbose", action="store_true", help="show Ray's and the workers' logs")
    run.add_argument("--allow-failed-trials", action="store_true",
                     help="exit 0 when a sweep succeeded even though some of its trials failed")


def _quantity_argument(value: str) -> str:
    try:
        quantity_bytes(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return value


_STATE_STYLE = {"PENDING": "dim", "RUNNING": "cyan", "TERMINATED": "green", "ERROR": "red", "STOPPED": "yellow",
                "INTERRUPTED": "yellow"}


def short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def config_text(config: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={short(v)}" for k, v in config.items())


class TrialTable:
    """Rendering of trial rows; kept apart from Tune so it can be tested on plain data."""

    def __init__(self, metric: str, max_t: int) -> None:
        self.metric, self.max_t = metric, max_t
        self.rows: dict[str, dict[str, Any]] = {}

    def update(self, trial_id: str, state: str, config: dict[str, Any], result: dict[str, Any] | None) -> list[str]:
        """Record a trial's state; return what happened since the last update, as log lines."""
        row = self.rows.get(trial_id)
        before = (None, 0) if row is None else (row["state"], row["epochs"])
        row = self.rows.setdefault(trial_id, {"state": state, "config": config, "epochs": 0, "metric": None})
        row["state"], row["config"] = state, config
        if result:
            row["epochs"] = int(result.get("epochs", row["epochs"]) or 0)
            if self.metric in result:
                row["metric"] = float(result[self.metric])
        return self._events(trial_id, row, *before)

    def _events(self, trial_id: str, row: dict[str, Any], state: str | None, epochs: int) -> list[str]:
        events = []
        if row["state"] == "RUNNING" and state in (None, "PENDING"):
            events.append(f"trial {trial_id} started: {config_text(row['config'])}")
        if row["epochs"] > epochs:
            metric = "" if row["metric"] is None else f" {self.metric}={row['metric']:.4f}"
            events.append(f"trial {trial_id} epoch {row['epochs']}/{self.max_t}{metric}")
        if row["state"] != state and row["state"] in ("TERMINATED", "ERROR", "INTERRUPTED"):
            events.append(f"trial {trial_id} {self._ending(row)}")
        return events

    def _ending(self, row: dict[str, Any]) -> str:
        metric = "" if row["metric"] is None else f", {self.metric}={row['metric']:.4f}"
        if row["state"] == "ERROR":
            return f"failed at epoch {row['epochs']}/{self.max_t}"
        if row["state"] == "INTERRUPTED":
            return (f"cut short at epoch {row['epochs']}/{self.max_t} by the interrupt "
                    "(it resumes from its last checkpoint)")
        if 0 < row["epochs"] < self.max_t:
            return f"stopped early by ASHA at epoch {row['epochs']}/{self.max_t}{metric}"
        return f"finished: epoch {row['epochs']}/{self.max_t}{metric}"

    def render(self) -> Table:
        table = Table(title="Trials", expand=False)
        with_runs = any(row.get("run") for row in self.rows.values())  # the cluster's table names them
        for column in ("trial", "state", "epoch", self.metric, "config", *(["MLflow run"] if with_runs else [])):
            table.add_column(column)
        for trial_id, row in sorted(self.rows.items()):
            state = row["state"]
            if state == "TERMINATED" and 0 < row["epochs"] < self.max_t:
                state = "STOPPED"  # ended before maxT: ASHA stopped it
            metric = "" if row["metric"] is None else f"{row['metric']:.4f}"
            table.add_row(trial_id, Text(state, style=_STATE_STYLE.get(state, "")),
                          f"{row['epochs']}/{self.max_t}", metric, config_text(row["config"]),
                          *([row.get("run") or ""] if with_runs else []))
        return table


