"""`raylight run`: the same manifest a cluster takes, on an embedded Ray and a local MLflow store."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from raylight.api import TrainingJob, TuneSweep

from .progress import EpochProgress, LiveTrials, TrialTable


@dataclass
class LocalOptions:
    tracking_uri: str | None = None
    data_dir: str | None = None
    storage_path: str | None = None
    num_cpus: int | None = None
    fresh: bool = False
    verbose: bool = False


def _is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_ray(num_cpus: int | None, verbose: bool) -> None:
    import ray

    from raylight_trainer.interrupt import starting_ray

    if ray.is_initialized():
        return
    with starting_ray():
        _init_ray(num_cpus, verbose)


def _init_ray(num_cpus: int | None, verbose: bool) -> None:
    import ray

    if os.environ.get("RAY_ADDRESS"):
        # Inside a Ray cluster (a KubeRay RayJob sets RAY_ADDRESS): join it, start nothing.
        ray.init(log_to_driver=verbose)
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    ray.init(
        # "local": always an embedded instance, never a cluster that happens to run on this machine.
        address="local",
        num_cpus=num_cpus or os.cpu_count() or 1,
        # The dashboard serves the State API that Ray Train needs to free stopped trials' resources.
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        # A free port, not 8265: another Ray on this machine would leave this one without a dashboard.
        dashboard_port=free_port(),
        log_to_driver=verbose,
        logging_level=logging.WARNING if not verbose else logging.INFO,
    )


def settings_for(options: LocalOptions, spec_uri: str | None) -> Any:
    from raylight_trainer.runs import RunSettings
    from raylight_trainer.tracking import local_store_uri

    workdir = Path.cwd()
    uri = options.tracking_uri or spec_uri or local_store_uri(workdir)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # Ray workers run in other directories: make the store path absolute.
        uri = f"sqlite:///{(workdir / uri.removeprefix('sqlite:///')).resolve()}"
    artifact_root = (workdir / "mlruns") if _is_local_store(uri) else None
    return RunSettings(
        tracking_uri=uri,
        storage_path=Path(options.storage_path or workdir / "raylight_results").resolve(),
        data_dir=str(Path(options.data_dir).resolve()) if options.data_dir else None,
        artifact_root=artifact_root,
    )


def run_resource(resource: TrainingJob | TuneSweep, options: LocalOptions, console: Console) -> dict[str, Any]:
    """Run one resource to the end; return the machine-readable summary."""
    from raylight_trainer import timeline

    timeline.mark("ray_init", trial="-")
    start_ray(options.num_cpus, options.verbose)
    timeline.mark("ray_ready", trial="-")
    settings = settings_for(options, resource.spec.mlflow.tracking_uri)
    if isinstance(resource, TuneSweep):
        return _run_sweep(resource, settings, options, console)
    return _run_job(resource, settings, options, console)


def _run_sweep(sweep: TuneSweep, settings: Any, options: LocalOptions, console: Console) -> dict[str, Any]:
    from raylight_trainer.interrupt import signal_name
    from raylight_trainer.sweep import run_sweep

    table = TrialTable(sweep.spec.objective.metric, sweep.spec.max_t())
    result = run_sweep(sweep, settings, callbacks=[LiveTrials(table, console)], fresh=options.fresh)
    best = result.best
    summary = {
        "kind": "TuneSweep",
        "name": result.name,
        "namespace": result.namespace,
        "objective": sweep.spec.objective.model_dump(),
        "bestMetric": best.metric if best else None,
        "bestTrialId": best.trial_id if best else None,
        "bestConfig": best.config if best else None,
        "trials": result.counts(),
        "stoppedEarly": [t.trial_id for t in result.trials if t.state == "stopped_early"],
        "failedTrials": {t.trial_id: t.error for t in result.trials if t.state == "failed"},
        "epochsTrained": sum(t.epochs for t in result.trials),
        "maxConcurrentTrials": result.max_concurrent_trials,
        "numSamples": sweep.spec.num_samples,
        "resumed": result.resumed,
        "wallSeconds": round(result.wall_seconds, 1),
        "mlflow": {
            "trackingUri": result.tracking_uri,
            "experimentName": result.experiment_name,
            "experimentId": result.experiment_id,
            "parentRunId": result.parent_run_id,
            "bestRunId": best.run_id if best else None,
            "modelUri": result.model_uri,
            "attributionsUri": result.attributions_uri,
        },
    }
    summary["interrupted"] = signal_name(result.interrupted) if result.interrupted else None
    summary["succeeded"] = result.counts()["failed"] < result.counts()["total"] and not result.interrupted
    return summary


def _run_job(job: TrainingJob, settings: Any, options: LocalOptions, console: Console) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    from raylight_trainer.interrupt import signal_name
    from raylight_trainer.runs import run_training_job
    from raylight_trainer.tracking import TAG_KIND, TAG_NAME, TAG_NAMESPACE, find_run

    metric = job.spec.objective.metric
    progress = EpochProgress(console, settings.tracking_uri, job.spec.training.max_epochs, metric)

    def current_run() -> str | None:
        client = MlflowClient(settings.tracking_uri)
        experiment = client.get_experiment_by_name(job.spec.mlflow.experiment or job.metadata.name)
        if experiment is None:
            return None
        return find_run(client, experiment.experiment_id, {TAG_KIND: "TrainingJob", TAG_NAME: job.metadata.name,
                                                           TAG_NAMESPACE: job.metadata.namespace})

    progress.start(current_run)
    try:
        result = run_training_job(job, settings, fresh=options.fresh)
    finally:
        progress.stop()
    return {
        "kind": "TrainingJob",
        "name": result.name,
        "namespace": result.namespace,
        "state": result.state,
        "objective": job.spec.objective.model_dump(),
        "bestMetric": result.metric,
        "epochs": result.epochs,
        "lastMetrics": result.metrics,
        "error": result.error,
        "wallSeconds": round(result.wall_seconds, 1),
        "mlflow": {
            "trackingUri": result.tracking_uri,
            "experimentName": result.experiment_name,
            "experimentId": result.experiment_id,
            "runId": result.run_id,
            "modelUri": result.model_uri,
            "attributionsUri": result.attributions_uri,
        },
        "interrupted": signal_name(result.interrupted) if result.interrupted else None,
        "succeeded": result.state == "succeeded",
    }


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
    # In a RayJob's pod (KubeRay sets RAY_ADDRESS) the signal came from Kubernetes stopping the pods.
    resume = ("It resumes from there when its Ray cluster starts again (a suspended resource: spec.suspend "
              "back to false)" if os.environ.get("RAY_ADDRESS") else "Run the same command to resume it")
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
        if summary["error"]:
            table.add_row("error", summary["error"])
        table.add_row("run", mlflow["runId"])
    table.add_row("MLflow", f"{mlflow['trackingUri']} (experiment {mlflow['experimentName']!r}, "
                            f"id {mlflow['experimentId']})")
    if mlflow.get("modelUri"):
        table.add_row("model", mlflow["modelUri"])
    if mlflow.get("attributionsUri"):
        table.add_row("attributions", f"{mlflow['attributionsUri']} (integrated gradients)")
    table.add_row("open it", f"mlflow ui --backend-store-uri {mlflow['trackingUri']}"
                  if _is_local_store(mlflow["trackingUri"]) else f"open {mlflow['trackingUri']}")
    table.add_row("took", f"{summary['wallSeconds']} s")
    style = "green" if summary["succeeded"] else "red"
    console.print(Panel(table, title=f"{summary['kind']} {summary['name']}", border_style=style))
