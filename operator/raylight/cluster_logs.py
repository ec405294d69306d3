"""`raylight logs`: a run's driver log, or its training workers' logs, while it runs and after.

While the RayJob's submitter pod exists, the driver's log is that pod's (live, as `kubectl logs`
shows it). The trainer also keeps every log in MLflow as it grows (`raylight_trainer.tracking.logs`):
the driver's on the sweep's parent run or the TrainingJob's run, each worker's on its trial's run.
Those copies are what is left once KubeRay has deleted the Ray cluster and its pods.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from raylight.api.tags import DRIVER_LOG, LOG_ARTIFACT_DIR
from raylight.cluster_commands import EXIT_OK, CommandError, Target, connect, outcome, resolve

FOLLOW_POLL_S = 3.0
SUBMITTER_CONTAINER = "ray-job-submitter"


@dataclass
class LogSource:
    """Where a log is read: a pod (live) or files of an MLflow run."""

    description: str  # what the user is told: pod/NAME, or the MLflow run
    pod: str | None = None
    reader: Any = None  # MlflowReader
    run_id: str | None = None
    files: tuple[str, ...] = ()  # under the run's logs/; empty: every worker-*.log found
    contents: dict[str, bytes] = field(default_factory=dict)  # as first read, when it was found


def logs(args: argparse.Namespace) -> int:
    """Print (and with -f, follow) the driver's log, or with --trial/--workers the training workers'."""
    if args.follow and args.output == "json":
        raise CommandError("--follow prints the log as it grows: use it without -o json")
    target = connect(args)
    resource = resolve(target, args.name)
    kind, name = resource["kind"], resource["metadata"]["name"]
    if args.trial and kind != "TuneSweep":
        raise CommandError(f"--trial: {name} is a TrainingJob, which has no trials; "
                           "--workers shows its training workers' logs")
    if args.workers and kind != "TrainingJob":
        raise CommandError(f"--workers: the workers of TuneSweep {name} belong to its trials: "
                           f"use --trial ID (raylight trials {name} lists them)")
    while True:
        source = _worker_source(target, resource, args) if args.trial or args.workers \
            else _driver_source(target, resource, args)
        if source is not None:
            break
        if not args.follow:
            raise CommandError(_not_yet(resource, args))
        if outcome(resource) is not None:
            raise CommandError(f"{kind} {name} ended without leaving a log in MLflow")
        time.sleep(FOLLOW_POLL_S)
        resource = resolve(target, f"{kind}/{name}")
    if source.pod:
        return _pod_log(target, source, args)
    return _mlflow_log(target, resource, source, args)


def _not_yet(resource: dict[str, Any], args: argparse.Namespace) -> str:
    kind, name = resource["kind"], resource["metadata"]["name"]
    phase = (resource.get("status") or {}).get("phase") or "Pending"
    what = f"trial {args.trial}'s workers" if args.trial else "its workers" if args.workers else "its driver"
    return f"{kind} {name} is {phase}: no log of {what} yet (-f waits for it)"


def _mlflow_reader(target: Target, resource: dict[str, Any], args: argparse.Namespace) -> Any:
    from raylight.cluster_mlflow import reader_for

    mlflow = (resource.get("status") or {}).get("mlflow") or {}
    return reader_for(target.api, mlflow.get("trackingUri") or "", target.namespace, args.tracking_uri)


def _driver_source(target: Target, resource: dict[str, Any], args: argparse.Namespace) -> LogSource | None:
    pod = _submitter_pod(target, resource)
    if pod is not None:
        return LogSource(f"pod/{pod}", pod=pod)
    run_id = ((resource.get("status") or {}).get("mlflow") or {}).get("runId")
    if not run_id:
        return None
    reader = _mlflow_reader(target, resource, args)
    contents = _read_files(reader, run_id, (DRIVER_LOG,))
    if not contents:
        return None
    return LogSource(f"MLflow run {run_id} (logs/{DRIVER_LOG})", reader=reader, run_id=run_id, files=(DRIVER_LOG,),
                     contents=contents)


def _submitter_pod(target: Target, resource: dict[str, Any]) -> str | None:
    """The newest submitter pod of the resource's RayJob whose container has started."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from raylight.cluster_commands import _api_error
    from raylight.operator.builder import LABEL_KIND, LABEL_NAME

    selector = (f"{LABEL_KIND}={resource['kind']},{LABEL_NAME}={resource['metadata']['name']},"
                "raylight.dev/role=submitter")
    core: Any = client.CoreV1Api(target.api)
    try:
        pods = core.list_namespaced_pod(target.namespace, label_selector=selector).items
    except ApiException as exc:
        raise _api_error(exc) from None
    started = [pod for pod in pods if any((s.state.running or s.state.terminated)
                                          for s in (pod.status.container_statuses or []))]
    if not started:
        return None
    return str(max(started, key=lambda pod: pod.metadata.creation_timestamp).metadata.name)


def _pod_log(target: Target, source: LogSource, args: argparse.Namespace) -> int:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from raylight.cluster_commands import _api_error

    core: Any = client.CoreV1Api(target.api)
    try:
        if args.follow:
            response = core.read_namespaced_pod_log(source.pod, target.namespace, container=SUBMITTER_CONTAINER,
                                                    follow=True, _preload_content=False)
            for chunk in response.stream(65536):
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
            return EXIT_OK
        text = core.read_namespaced_pod_log(source.pod, target.namespace, container=SUBMITTER_CONTAINER)
    except ApiException as exc:
        raise _api_error(exc) from None
    _print(args, source, {DRIVER_LOG: text})
    return EXIT_OK


def _worker_source(target: Target, resource: dict[str, Any], args: argparse.Namespace) -> LogSource | None:
    mlflow = (resource.get("status") or {}).get("mlflow") or {}
    if not mlflow.get("runId"):
        return None
    reader = _mlflow_reader(target, resource, args)
    run_id, what = mlflow["runId"], "the TrainingJob's"
    if args.trial:
        run_id = _trial_run(reader, resource, args.trial)
        if run_id is None:
            return None
        what = f"trial {args.trial}'s"
    contents = _read_files(reader, run_id, ())
    if not contents:
        return None
    return LogSource(f"MLflow run {run_id} ({what} worker logs)", reader=reader, run_id=run_id, contents=contents)


def _trial_run(reader: Any, resource: dict[str, Any], trial: str) -> str | None:
    """The MLflow run of a trial, by its ID or the ID's number (00003 for a1b2c_00003)."""
    from raylight.cluster_mlflow import trial_rows

    mlflow = (resource.get("status") or {}).get("mlflow") or {}
    rows = trial_rows(reader, mlflow.get("experimentId") or "", mlflow["runId"], "val_acc")
    found = [row for row in rows if row["trial"] == trial or str(row["trial"]).endswith(f"_{trial}")]
    if len(found) == 1:
        return str(found[0]["runId"])
    if not found and (resource.get("status") or {}).get("phase") in ("Pending", "Running", None):
        return None  # it may start later
    known = ", ".join(str(row["trial"]) for row in rows) or "none yet"
    problem = "matches several trials" if found else "is no trial of this sweep"
    raise CommandError(f"--trial {trial} {problem} (its trials: {known})")


def _run_files_root(reader: Any, run_id: str) -> str:
    from raylight.cluster_mlflow import served_path

    location = str(((reader.run(run_id) or {}).get("info") or {}).get("artifact_uri") or "")
    served = served_path(location)
    if served is None:
        raise CommandError(f"the run's files are at {location or 'no known place'}, which the MLflow server does "
                           "not serve: read them from there")
    return f"{served.rstrip('/')}/{LOG_ARTIFACT_DIR}"


def _read_files(reader: Any, run_id: str, names: tuple[str, ...]) -> dict[str, bytes]:
    """The run's kept logs by name (the given ones, or every worker's), those that exist."""
    root = _run_files_root(reader, run_id)
    if not names:
        listed = [str(entry["path"]).rsplit("/", 1)[-1] for entry in reader.artifact_files(root)
                  if not entry.get("is_dir")]
        names = tuple(sorted((n for n in listed if n.startswith("worker-")), key=_worker_order))
    found = {name: reader.artifact_if_any(f"{root}/{name}") for name in names}
    return {name: content for name, content in found.items() if content is not None}


def _worker_order(name: str) -> tuple[int, str]:
    digits = "".join(ch for ch in name if ch.isdigit())
    return (int(digits) if digits else 0, name)


def _mlflow_log(target: Target, resource: dict[str, Any], source: LogSource, args: argparse.Namespace) -> int:
    contents = source.contents
    if not args.follow:
        _print(args, source, {name: data.decode(errors="replace") for name, data in contents.items()})
        return EXIT_OK
    shown: dict[str, int] = {}
    last_name: list[str] = []
    while True:
        _print_new(contents, shown, last_name)
        if _ended(target, resource, source):
            time.sleep(FOLLOW_POLL_S)  # the trainer's last upload follows its last status change
            _print_new(_read_files(source.reader, str(source.run_id), source.files), shown, last_name)
            return EXIT_OK
        time.sleep(FOLLOW_POLL_S)
        contents = _read_files(source.reader, str(source.run_id), source.files)


def _ended(target: Target, resource: dict[str, Any], source: LogSource) -> bool:
    run = source.reader.run(source.run_id) or {}
    if (run.get("info") or {}).get("status") not in (None, "RUNNING", "SCHEDULED"):
        return True
    return outcome(resolve(target, f"{resource['kind']}/{resource['metadata']['name']}")) is not None


def _print_new(contents: dict[str, bytes], shown: dict[str, int], last_name: list[str]) -> None:
    """What each file gained since the last call, headed by its name when several are followed."""
    for name, data in contents.items():
        new = data[shown.get(name, 0):]
        if not new:
            continue
        if len(contents) > 1 and last_name != [name]:
            sys.stdout.write(f"==> {name} <==\n")
            last_name[:] = [name]
        sys.stdout.write(new.decode(errors="replace"))
        sys.stdout.flush()
        shown[name] = len(data)


def _print(args: argparse.Namespace, source: LogSource, texts: dict[str, str]) -> None:
    if args.output == "json":
        print(json.dumps({"name": args.name, "source": source.description, "logs": texts}, indent=2))
        return
    print(f"# {source.description}", file=sys.stderr)
    for name, text in texts.items():
        if len(texts) > 1:
            print(f"==> {name} <==")
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    sys.stdout.flush()


def add_logs_command(commands: Any, cluster_flags: Any, guarded: Any) -> None:
    parser = commands.add_parser(
        "logs", help="the driver's log of a run on the cluster, or its training workers' (--trial, --workers)",
        epilog="While the run's submitter pod exists its log is read there; afterwards, and for the workers, "
               "from the copies the trainer keeps in MLflow (logs/ of the run).")
    parser.add_argument("name", help="NAME or KIND/NAME")
    parser.add_argument("--trial", metavar="ID", help="a sweep's trial: its training workers' logs "
                        "(the ID as raylight trials shows it, or its number)")
    parser.add_argument("--workers", action="store_true", help="a TrainingJob's training workers' logs")
    parser.add_argument("-f", "--follow", action="store_true",
                        help="keep printing as the log grows, until the run ends")
    parser.add_argument("--tracking-uri", help="reach MLflow here instead of the URI in the status")
    cluster_flags(parser)
    parser.set_defaults(handler=guarded(logs))
