"""The driver of a run: the same manifest on an embedded Ray with a local MLflow store (`raylight run`)
or on a KubeRay cluster (the trainer image's entrypoint joins it). Both call `run_command`.

Module-level imports stay light (no torch, ray or mlflow): the `raylight` CLI builds its parser from here.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from rich.console import Console
from rich.markup import escape

from raylight.api import ManifestError, TrainingJob, TuneSweep, read_manifests
from raylight.api.cluster import is_object_store
from raylight.api.console import EXIT_FAILED, EXIT_OK, add_run_arguments, print_errors
from raylight.api.manifest import no_resource_error

from .console.summary import is_local_store, run_exit_code
from .runtime.placement import ray_cluster_address, storage_field
from .runtime.ports import free_port
from .runtime.storage import Storage

if TYPE_CHECKING:  # the module itself imports torch and MLflow
    from collections.abc import Iterator

    from .training.run_state import RunSettings


@dataclass
class RunOptions:
    tracking_uri: str | None = None
    data_dir: str | None = None
    storage_path: str | None = None
    num_cpus: int | None = None
    fresh: bool = False
    verbose: bool = False


def start_ray(num_cpus: int | None, verbose: bool) -> None:
    import ray

    from .runtime.interrupt import starting_ray

    if ray.is_initialized():
        return
    with starting_ray():
        _init_ray(num_cpus, verbose)


def _init_ray(num_cpus: int | None, verbose: bool) -> None:
    import ray

    if ray_cluster_address():
        # Inside a RayJob's cluster: join it, start nothing.
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


def storage_for(options: RunOptions) -> Storage:
    """Where the run keeps its state: --storage-path (a directory or an s3:// or gs:// URI), else
    ./raylight_results."""
    return Storage.at(options.storage_path or Path.cwd() / "raylight_results")


def _data_dir(option: str | None) -> str | None:
    """--data-dir made absolute (Ray's workers run in other directories); an object store's URI as is."""
    if not option:
        return None
    return option if is_object_store(option) else str(Path(option).resolve())


def settings_for(options: RunOptions, spec_uri: str | None) -> RunSettings:
    from .tracking.mlflow_runs import local_store_uri
    from .training.run_state import RunSettings

    workdir = Path.cwd()
    uri = options.tracking_uri or spec_uri or local_store_uri(workdir)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # Ray workers run in other directories: make the store path absolute.
        uri = f"sqlite:///{(workdir / uri.removeprefix('sqlite:///')).resolve()}"
    artifact_root = (workdir / "mlruns") if is_local_store(uri) else None
    return RunSettings(
        tracking_uri=uri,
        storage=storage_for(options),
        data_dir=_data_dir(options.data_dir),
        artifact_root=artifact_root,
    )


# What the driver needs once Ray is up. Imported in a thread while Ray starts, which mostly waits for
# its own processes (GCS, raylet, dashboard): a local run's first seconds did one, then the other.
_LOADED_AFTER_RAY = ("torch", "pytorch_lightning", "mlflow")


def _import_in_background(modules: tuple[str, ...]) -> threading.Thread:
    def load() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:
                return

    thread = threading.Thread(target=load, name="raylight-imports", daemon=True)
    thread.start()
    return thread


def run_resource(resource: TrainingJob | TuneSweep, options: RunOptions, console: Console) -> dict[str, Any]:
    """Run one resource to the end; return the machine-readable summary."""
    from .runtime import timeline

    # First: an object store that refuses the credentials or lacks the bucket fails in a second, with
    # the URI and the Secret named, not in a trial's traceback minutes later.
    storage_for(options).check_writable(storage_field())
    check_model_sources(resource, options)
    loading = _import_in_background(_LOADED_AFTER_RAY)
    timeline.mark("ray_init", trial="-")
    start_ray(options.num_cpus, options.verbose)
    timeline.mark("ray_ready", trial="-")
    loading.join()
    settings = settings_for(options, resource.spec.mlflow.tracking_uri)
    if isinstance(resource, TuneSweep):
        return _run_sweep(resource, settings, options, console)
    return _run_job(resource, settings, options, console)


def model_sources(resource: TrainingJob | TuneSweep) -> tuple[set[str], set[str]]:
    """(weights to start from, timm model names) a run may use: its spec's, and a sweep's choices."""
    model = resource.spec.trial.model if isinstance(resource, TuneSweep) else resource.spec.model
    weights = ({model.pretrained} if model.pretrained else set()) | _searched_values(resource, "model.pretrained")
    names = _searched_values(resource, "model.name")
    if model.architecture == "timm" and not _is_searched(resource, "model.name"):
        names.add(model.timm_name())
    return weights, names


def _is_searched(resource: TrainingJob | TuneSweep, key: str) -> bool:
    return isinstance(resource, TuneSweep) and key in resource.spec.search_space


def _searched_values(resource: TrainingJob | TuneSweep, key: str) -> set[str]:
    """The values a sweep's search space may give `key` (none for a TrainingJob)."""
    if not isinstance(resource, TuneSweep) or key not in resource.spec.search_space:
        return set()
    return set(map(str, resource.spec.search_space[key].probe_values()))


def check_model_sources(resource: TrainingJob | TuneSweep, options: RunOptions) -> None:
    """Before Ray starts: a timm name timm lacks, weights that are not there or an unreachable hub
    fail in seconds, naming the field (not in every trial's worker, minutes later)."""
    weights, names = model_sources(resource)
    if not (weights or names):
        return
    from .model.pretrained import check_pretrained, check_timm_name

    for name in sorted(names):
        with _naming(resource, "model.name", name):
            check_timm_name(name)
    from_mlflow = any(value.startswith(("models:/", "runs:/")) for value in weights)
    tracking_uri = settings_for(options, resource.spec.mlflow.tracking_uri).tracking_uri if from_mlflow else None
    for value in sorted(weights):
        with _naming(resource, "model.pretrained", value):
            check_pretrained(value, _data_dir(options.data_dir), tracking_uri)


@contextlib.contextmanager
def _naming(resource: TrainingJob | TuneSweep, key: str, value: str) -> Iterator[None]:
    """A check's error with the field where the value is written: in a sweep, its search space's
    choice (spec.searchSpace.model.pretrained) or its trial template (spec.trial.model.pretrained)."""
    from .runtime.errors import PretrainedError

    try:
        yield
    except PretrainedError as exc:
        written = f"spec.{key}"
        if isinstance(resource, TuneSweep):
            chosen = value in _searched_values(resource, key)
            written = f"spec.searchSpace.{key}" if chosen else f"spec.trial.{key}"
        raise PretrainedError(written + str(exc).removeprefix(f"spec.{key}")) from exc


def _run_sweep(sweep: TuneSweep, settings: RunSettings, options: RunOptions, console: Console) -> dict[str, Any]:
    from .console.progress import LiveTrials, TrialTable
    from .runtime.interrupt import signal_name
    from .tuning.sweep import run_sweep

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
    summary["error"] = result.error
    summary["succeeded"] = result.counts()["failed"] < result.counts()["total"] and not result.interrupted \
        and not result.error
    return summary


def _run_job(job: TrainingJob, settings: RunSettings, options: RunOptions, console: Console) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    from .console.progress import EpochProgress
    from .runtime.interrupt import signal_name
    from .tracking.mlflow_runs import TAG_KIND, TAG_NAME, TAG_NAMESPACE, find_run
    from .training.job import run_training_job

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


def _export_data_cache(args: argparse.Namespace) -> None:
    """The dataset cache's settings, in the environment every Ray worker of a local run inherits."""
    from raylight.api.pods import DATA_CACHE_ENV, DATA_CACHE_SIZE_ENV

    if getattr(args, "data_cache", None):
        os.environ[DATA_CACHE_ENV] = str(Path(args.data_cache).expanduser().resolve())
    if getattr(args, "data_cache_size", None):
        os.environ[DATA_CACHE_SIZE_ENV] = args.data_cache_size


def run_command(args: argparse.Namespace) -> int:
    """Run every resource of a manifest file in turn; print their summaries; return the exit code."""
    # Progress and logs go to stderr, so that `--output json` leaves stdout machine-readable.
    console = Console(stderr=True, highlight=False)
    try:
        resources, notes = read_manifests(args.file)
        if not resources:
            raise no_resource_error(args.file, notes)
    except ManifestError as exc:
        print_errors(console, exc.errors)
        if args.output == "json":
            print(json.dumps({"succeeded": False, "errors": [str(e) for e in exc.errors]}, indent=2))
        return EXIT_FAILED
    for note in notes:
        console.print(f"[dim]skip[/dim] {escape(note)}", soft_wrap=True)
    options = RunOptions(
        tracking_uri=args.tracking_uri, data_dir=args.data_dir, storage_path=args.storage_path,
        num_cpus=args.num_cpus, fresh=args.fresh, verbose=args.verbose,
    )
    _export_data_cache(args)
    from .runtime.interrupt import handling_signals

    summaries: list[dict[str, Any]] = []
    with handling_signals():
        for resource in resources:
            summary, code = _run_one(resource, options, args, console)
            if summary is None:
                return code
            summaries.append(summary)
            if summary.get("interrupted"):
                break
    if args.output == "json":
        print(json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=2, default=str))
    return run_exit_code(summaries, args.allow_failed_trials, console)


def _run_one(resource: TrainingJob | TuneSweep, options: RunOptions, args: argparse.Namespace,
             console: Console) -> tuple[dict[str, Any] | None, int]:
    """One resource's summary (printed), or None and the exit code when it could not run."""
    from .console.summary import print_summary
    from .runtime.errors import DatasetError, PretrainedError, StorageError
    from .runtime.interrupt import exit_code as interrupt_exit_code
    from .runtime.interrupt import received_signal, signal_name
    from .training.resources import ResourceError

    address = ray_cluster_address()
    where = f"the Ray cluster at {address}" if address else "a local Ray instance"
    console.print(f"[bold]{resource.kind} {resource.metadata.name}[/bold]: starting on {where}")
    try:
        # Libraries print to stdout (MLflow's run links); keep it for the JSON summary alone.
        with contextlib.redirect_stdout(sys.stderr):
            summary = run_resource(resource, options, console)
    except (ResourceError, DatasetError, StorageError, PretrainedError, RuntimeError) as exc:
        # One line (no wrapping at the console's width): the operator finds it in the job's log tail.
        console.print(f"[red]error[/red] {escape(f'{args.file}: {exc}')}", soft_wrap=True)
        return None, EXIT_FAILED
    except KeyboardInterrupt:
        signum = received_signal() or signal.SIGINT
        console.print(f"[yellow]stopped at once[/yellow] by {signal_name(signum)}: run the same command to "
                      "resume from the last saved state")
        return None, interrupt_exit_code(signum)
    if args.output == "text" or summary.get("interrupted"):
        print_summary(summary, console)  # on stderr: with -o json too, for who pressed Ctrl-C
    return summary, EXIT_OK


def exit_quickly(code: int) -> NoReturn:
    """End the process once its command is over, as a normal exit does but for the interpreter's
    own teardown: the threads it would wait for are joined and every exit handler runs (Ray's
    shutdown, which stops its processes; MLflow's and the logs' flushes; temporary files), then the
    process exits. The teardown left out (freeing torch's, Ray's core worker's and MLflow's objects
    one by one) took 3 s after every local run on a 2-core machine, and a finished run needs none
    of it."""
    import atexit

    from .runtime.interrupt import end_now, ending_at_once_on_a_signal, work_left_in_background

    ending_at_once_on_a_signal(code)
    if work_left_in_background():
        # An interrupted TrainingJob leaves its fit waiting inside a Ray call. Ray's shutdown (an
        # exit handler) would wake it there, and its first touch of the shut-down core worker
        # makes Ray end the process with exit code 1 (an e2e run on a loaded machine exited 1, not
        # 143, after SIGTERM). Nothing else needs the exit handlers then: the local Ray's
        # processes are killed, as on a second signal. Before threading's exit hooks too: they
        # join threads, and one may wait on the work left inside Ray (a CI run hung there once).
        end_now(code)
    # What the interpreter does first at exit: threading's own exit hooks (they stop the idle
    # workers of every ThreadPoolExecutor still referenced, as MLflow keeps one for artifact
    # copies), then it joins the non-daemon threads. Joining without the hooks waited forever.
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    """`python -m raylight_trainer MANIFEST [options]`: what a RayJob's entrypoint runs."""
    parser = argparse.ArgumentParser(prog="python -m raylight_trainer", description=__doc__)
    add_run_arguments(parser)
    return run_command(parser.parse_args(argv))
