"""What a finished (or interrupted) run prints: a summary panel, or where it stopped and how to resume."""

from __future__ import annotations

import signal
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from raylight.api.console import EXIT_FAILED, EXIT_OK

from ..runtime.placement import ray_cluster_address

# Exit codes (README: "Exit codes"): 0 all good; 1 a manifest is invalid, or the run failed (or a
# trial did, unless --allow-failed-trials); 2 the command line itself is wrong (argparse's own);
# 128 + N: stopped by signal N, as a shell reports it.


def is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def print_interrupted(summary: dict[str, Any], console: Console) -> None:
    """An interrupted run: how far it got, and that the same command resumes it."""
    if summary["kind"] == "TuneSweep":
        counts = summary["trials"]
        cut = counts["running"] + counts["pending"]
        unstarted = max(summary["numSamples"] - counts["total"], 0)
        where = (f"{counts['succeeded']} of {summary['numSamples']} trials ran to the end, "
                 f"{counts['stopped_early']} stopped early, {counts['failed']} failed, {cut} cut short "
                 f"(their last checkpoints kept), {unstarted} not started")
    else:
        where = f"after {summary['epochs']} epoch(s) (its last checkpoint kept)"
    # In a RayJob's pod the signal came from Kubernetes stopping the pods.
    resume = ("It resumes from there when its Ray cluster starts again (a suspended resource: spec.suspend "
              "back to false)" if ray_cluster_address() else "Run the same command to resume it")
    console.print(f"[yellow]interrupted[/yellow] by {summary['interrupted']}: {where}. "
                  f"{resume} (MLflow: {summary['mlflow']['trackingUri']}).", soft_wrap=True)


def print_summary(summary: dict[str, Any], console: Console) -> None:
    if summary.get("interrupted"):
        print_interrupted(summary, console)
        return
    mlflow = summary["mlflow"]
    metric = summary["objective"]["metric"]
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    if summary["kind"] == "TuneSweep":
        counts = summary["trials"]
        table.add_row("best trial", str(summary["bestTrialId"]))
        table.add_row(f"best {metric}", "-" if summary["bestMetric"] is None else f"{summary['bestMetric']:.4f}")
        table.add_row("best config", ", ".join(f"{k}={v}" for k, v in (summary["bestConfig"] or {}).items()))
        table.add_row("trials", f"{counts['total']} total: {counts['succeeded']} ran to the end, "
                                f"{counts['stopped_early']} stopped early by the scheduler, {counts['failed']} failed")
        if summary["stoppedEarly"]:
            table.add_row("stopped early", ", ".join(summary["stoppedEarly"]))
        for trial_id, error in summary["failedTrials"].items():
            table.add_row(f"failed {trial_id}", str(error))
        table.add_row("epochs trained", str(summary["epochsTrained"]))
        table.add_row("parent run", mlflow["parentRunId"])
    else:
        table.add_row("state", summary["state"])
        table.add_row(f"best {metric}", "-" if summary["bestMetric"] is None else f"{summary['bestMetric']:.4f}")
        table.add_row("epochs", str(summary["epochs"]))
        table.add_row("run", mlflow["runId"])
    if summary.get("error"):
        table.add_row("error", summary["error"])
    table.add_row("MLflow", f"{mlflow['trackingUri']} (experiment {mlflow['experimentName']!r}, "
                            f"id {mlflow['experimentId']})")
    if mlflow.get("modelUri"):
        table.add_row("model", mlflow["modelUri"])
    if mlflow.get("attributionsUri"):
        table.add_row("attributions", f"{mlflow['attributionsUri']} (integrated gradients)")
    table.add_row("open it", f"mlflow ui --backend-store-uri {mlflow['trackingUri']}"
                  if is_local_store(mlflow["trackingUri"]) else f"open {mlflow['trackingUri']}")
    table.add_row("took", f"{summary['wallSeconds']} s")
    style = "green" if summary["succeeded"] else "red"
    console.print(Panel(table, title=f"{summary['kind']} {summary['name']}", border_style=style))


def run_exit_code(summaries: list[dict[str, Any]], allow_failed_trials: bool, console: Console) -> int:
    """The verdict on a command's runs: 1 for a failed run, and for a sweep some of whose trials
    failed unless that is allowed (the operator's driver allows it: the sweep's status counts them)."""
    stopped_by = next((s["interrupted"] for s in summaries if s.get("interrupted")), None)
    if stopped_by:  # 130 for SIGINT, 143 for SIGTERM, as a shell reports a process the signal ended
        return 128 + int(signal.Signals[stopped_by])
    if not all(s["succeeded"] for s in summaries):
        return EXIT_FAILED
    failed_trials = sum((s.get("trials") or {}).get("failed", 0) for s in summaries)
    if failed_trials and not allow_failed_trials:
        console.print(f"[red]{failed_trials} trial(s) failed[/red]: exit {EXIT_FAILED} "
                      "(--allow-failed-trials accepts a sweep whose best trial is enough)")
        return EXIT_FAILED
    return EXIT_OK
