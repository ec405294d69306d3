"""`raylight get`, `wait`, `trials`, `model` (and `logs`, in cluster_logs): the TrainingJobs and
TuneSweeps of a cluster, as a user reads them.

They talk to the API server as kubectl does (the current kubeconfig context and its namespace,
`--context`, `-n`), so `kubectl raylight get` works too (the `kubectl-raylight` script).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from dataclasses import dataclass
from typing import Any, cast

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from raylight.api import GROUP, VERSION
from raylight.api.console import EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT
from raylight.api.crd import KIND_INFO
from raylight.operator.state import find_condition

KINDS = {kind: str(info["plural"]) for kind, info in KIND_INFO.items()}
# What `kind/NAME` may say, as kubectl accepts it: kind, plural or short name, any case.
_KIND_WORDS = {word: kind for kind, info in KIND_INFO.items()
               for word in (kind.lower(), info["plural"], *info["short"])}


class CommandError(Exception):
    """A problem the user can fix, said in one line (a missing resource, no cluster)."""


@dataclass
class Target:
    custom: Any  # kubernetes.client.CustomObjectsApi
    namespace: str
    api: Any  # kubernetes.client.ApiClient


def connect(args: argparse.Namespace) -> Target:
    """The API client and namespace that kubectl would use with the same flags."""
    from kubernetes import client, config

    try:
        contexts, active = config.list_kube_config_contexts()
    except config.ConfigException as exc:
        try:  # in a pod, with no kubeconfig: its ServiceAccount, like kubectl
            config.load_incluster_config()
        except config.ConfigException:
            raise CommandError(f"no cluster to talk to: {exc} (set KUBECONFIG or pass --context)") from None
        api = client.ApiClient()
        return Target(client.CustomObjectsApi(api), args.namespace or _pod_namespace(), api)
    chosen = active if args.context is None else next((c for c in contexts if c["name"] == args.context), None)
    if chosen is None:
        names = ", ".join(c["name"] for c in contexts)
        raise CommandError(f"--context {args.context}: no such context in the kubeconfig (it has: {names})")
    api = config.new_client_from_config(context=chosen["name"])
    namespace = args.namespace or chosen.get("context", {}).get("namespace") or "default"
    return Target(client.CustomObjectsApi(api), namespace, api)


def _pod_namespace() -> str:
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as handle:
            return handle.read().strip()
    except OSError:
        return "default"


def _api_error(exc: Any) -> CommandError:
    from raylight.operator.kube import api_message

    return CommandError(f"the API server said: {api_message(exc)}")


def resolve(target: Target, reference: str) -> dict[str, Any]:
    """The resource `reference` names: `NAME`, or `KIND/NAME` when both kinds have that name."""
    from kubernetes.client.exceptions import ApiException

    kind_word, _, name = reference.rpartition("/")
    if kind_word and kind_word.lower() not in _KIND_WORDS:
        raise CommandError(f"{reference}: unknown kind {kind_word!r}; use trainingjob/NAME or tunesweep/NAME")
    kinds = [_KIND_WORDS[kind_word.lower()]] if kind_word else list(KINDS)
    found = []
    for kind in kinds:
        try:
            found.append(target.custom.get_namespaced_custom_object(GROUP, VERSION, target.namespace,
                                                                    KINDS[kind], name))
        except ApiException as exc:
            if exc.status != 404:
                raise _api_error(exc) from None
    if not found:
        what = " or ".join(kinds)
        raise CommandError(f"no {what} named {name} in namespace {target.namespace} "
                           "(raylight get lists them; -n picks another namespace)")
    if len(found) > 1:
        raise CommandError(f"both a TrainingJob and a TuneSweep are named {name}: "
                           f"say which, as trainingjob/{name} or tunesweep/{name}")
    return cast(dict[str, Any], found[0])


def _age(created: str | None, now: datetime.datetime) -> str:
    if not created:
        return ""
    seconds = int((now - datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def summarize(resource: dict[str, Any], now: datetime.datetime) -> dict[str, Any]:
    """One row of `raylight get`: what a user asks first about a run."""
    spec, status = resource.get("spec") or {}, resource.get("status") or {}
    kind = resource["kind"]
    objective = (spec.get("objective") or {}).get("metric", "val_acc")
    if kind == "TuneSweep":
        best = status.get("bestTrial") or {}
        progress, metric = status.get("progress") or f"0/{spec.get('numSamples', '?')}", best.get("metric")
    else:
        max_epochs = ((spec.get("training") or {}).get("maxEpochs")) or 10
        progress, metric = f"{status.get('epoch') or 0}/{max_epochs} epochs", status.get("metric")
    failed = find_condition(status, "Failed")
    failed = failed if failed and failed.get("status") == "True" else None
    return {
        "kind": kind, "name": resource["metadata"]["name"], "namespace": resource["metadata"].get("namespace"),
        "phase": status.get("phase") or "Pending", "progress": progress,
        "objective": objective, "metric": metric,
        "reason": (failed or {}).get("message") or status.get("rootCause"),
        "age": _age(resource["metadata"].get("creationTimestamp"), now),
    }


def _list(target: Target, all_namespaces: bool) -> list[dict[str, Any]]:
    from kubernetes.client.exceptions import ApiException

    items: list[dict[str, Any]] = []
    for kind, plural in KINDS.items():
        try:
            if all_namespaces:
                found = target.custom.list_cluster_custom_object(GROUP, VERSION, plural)
            else:
                found = target.custom.list_namespaced_custom_object(GROUP, VERSION, target.namespace, plural)
        except ApiException as exc:
            if exc.status == 404:
                raise CommandError("the cluster has no raylight.dev resources: "
                                   "install the chart (its CRDs) first") from None
            raise _api_error(exc) from None
        for item in found.get("items", []):
            item.setdefault("kind", kind)
            items.append(item)
    return items


def get(args: argparse.Namespace) -> int:
    target = connect(args)
    now = datetime.datetime.now(datetime.timezone.utc)
    resources = [resolve(target, args.name)] if args.name else _list(target, args.all_namespaces)
    rows = sorted((summarize(r, now) for r in resources), key=lambda row: (row["namespace"], row["name"]))
    if args.output == "json":
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    console = Console(highlight=False, soft_wrap=True)
    if not rows:
        where = "any namespace" if args.all_namespaces else f"namespace {target.namespace}"
        console.print(f"No TrainingJobs or TuneSweeps in {where}.")
        return EXIT_OK
    table = Table(box=None, pad_edge=False)
    columns = (["namespace"] if args.all_namespaces else []) + ["name", "phase", "progress", "best/last", "age"]
    for column in columns:
        table.add_column(column.upper())
    for row in rows:
        metric = "" if row["metric"] is None else f"{row['objective']}={row['metric']:.4f}"
        cells = [row["namespace"]] if args.all_namespaces else []
        style = {"Succeeded": "green", "Failed": "red", "Running": "cyan"}.get(row["phase"], "")
        table.add_row(*cells, f"{row['kind'].lower()}/{row['name']}", f"[{style}]{row['phase']}[/{style}]"
                      if style else row["phase"], row["progress"], metric, row["age"])
    console.print(table)
    return EXIT_OK


def outcome(resource: dict[str, Any]) -> str | None:
    """Succeeded or Failed once the status describes the current spec and the run has ended."""
    status = resource.get("status") or {}
    if status.get("observedGeneration") != resource["metadata"].get("generation"):
        return None  # an older run's outcome, before the spec changed
    phase = status.get("phase")
    return phase if phase in ("Succeeded", "Failed") else None


def wait(args: argparse.Namespace) -> int:
    """Follow one resource until it ends: exit 0 on Succeeded, 1 with the reason on Failed."""
    from kubernetes import watch

    target = connect(args)
    resource = resolve(target, args.name)
    kind, name = resource["kind"], resource["metadata"]["name"]
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    deadline = time.monotonic() + args.timeout if args.timeout else None
    while outcome(resource) is None:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            err.print(f"[yellow]timed out[/yellow] after {args.timeout:g} s: {kind} {name} is "
                      f"{(resource.get('status') or {}).get('phase') or 'Pending'}")
            return EXIT_TIMEOUT
        stream = watch.Watch().stream(
            target.custom.list_namespaced_custom_object, GROUP, VERSION, target.namespace, KINDS[kind],
            field_selector=f"metadata.name={name}", resource_version=resource["metadata"]["resourceVersion"],
            timeout_seconds=int(min(left, 300)) + 1 if left is not None else 300,
        )
        resource = _next_change(stream, resource, target, kind, name)
    return _report(resource, args, err)


def _next_change(stream: Any, resource: dict[str, Any], target: Target, kind: str, name: str) -> dict[str, Any]:
    """The resource after its next change (or as it stands when the watch timed out or expired)."""
    from kubernetes.client.exceptions import ApiException

    try:
        for event in stream:
            if event["type"] == "DELETED":
                raise CommandError(f"{kind} {name} was deleted before it ended")
            if event["type"] in ("ADDED", "MODIFIED"):
                resource = event["object"]
                if outcome(resource) is not None:
                    return resource
    except ApiException as exc:
        if exc.status != 410:  # 410 Gone: the watch's resourceVersion is too old; read afresh
            raise _api_error(exc) from None
    return resolve(target, f"{kind}/{name}")


def _report(resource: dict[str, Any], args: argparse.Namespace, err: Console) -> int:
    summary = summarize(resource, datetime.datetime.now(datetime.timezone.utc))
    if args.output == "json":
        print(json.dumps({**summary, "status": resource.get("status") or {}}, indent=2))
    kind, name = summary["kind"], summary["name"]
    if summary["phase"] == "Succeeded":
        metric = "" if summary["metric"] is None else f": {summary['objective']}={summary['metric']:.4f}"
        if args.output != "json":
            Console(highlight=False, soft_wrap=True).print(f"[green]{kind} {name} succeeded[/green]{metric}")
        return EXIT_OK
    err.print(f"[red]{kind} {name} failed[/red]: {escape(summary['reason'] or 'no reason recorded')}")
    return EXIT_FAILED


def trials(args: argparse.Namespace) -> int:
    """A sweep's trial table, as the local run shows it, from its MLflow runs."""
    from raylight.api import ManifestError, TuneSweep, parse_resource
    from raylight.api.console import TrialTable
    from raylight.cluster_mlflow import reader_for, table_state, trial_rows

    target = connect(args)
    resource = resolve(target, args.name if "/" in args.name else f"tunesweep/{args.name}")
    try:
        sweep = parse_resource({k: resource[k] for k in ("apiVersion", "kind", "metadata", "spec")})
    except ManifestError as exc:
        raise CommandError(f"{args.name}: its spec is invalid ({exc.errors[0]})") from None
    if not isinstance(sweep, TuneSweep):
        raise CommandError(f"{args.name} is a TrainingJob: trials belong to TuneSweeps (raylight get shows its epochs)")
    status = resource.get("status") or {}
    mlflow = status.get("mlflow") or {}
    metric = sweep.spec.objective.metric
    rows: list[dict[str, Any]] = []
    if mlflow.get("runId") and mlflow.get("experimentId"):
        reader = reader_for(target.api, mlflow.get("trackingUri") or "", target.namespace, args.tracking_uri)
        rows = trial_rows(reader, mlflow["experimentId"], mlflow["runId"], metric)
    pending = max(sweep.spec.num_samples - len(rows), 0)
    if args.output == "json":
        print(json.dumps({"name": sweep.metadata.name, "phase": status.get("phase") or "Pending",
                          "objective": metric, "pending": pending, "trials": rows}, indent=2))
        return EXIT_OK
    table = TrialTable(metric, sweep.spec.max_t())
    for row in rows:
        table.update(row["trial"], table_state(row["state"]), row["config"],
                     {"epochs": row["epochs"], **({metric: row["metric"]} if row["metric"] is not None else {})})
        table.rows[row["trial"]]["run"] = row["runId"]
    console = Console(highlight=False, soft_wrap=True)
    phase = status.get("phase") or "Pending"
    if rows:
        console.print(table.render())
    console.print(f"TuneSweep {sweep.metadata.name}: {phase}, {len(rows)} trial(s) started, {pending} not yet"
                  + (f"; MLflow experiment {mlflow['experimentId']}, parent run {mlflow['runId']}"
                     if mlflow.get("runId") else ""))
    return EXIT_OK


def model(args: argparse.Namespace) -> int:
    """The best model's URI, how to load it, and (--download) its files."""
    from pathlib import Path

    from raylight.cluster_mlflow import ModelError, download_model, reader_for
    from raylight.operator.progress import ProgressError

    target = connect(args)
    resource = resolve(target, args.name)
    kind, name = resource["kind"], resource["metadata"]["name"]
    status = resource.get("status") or {}
    mlflow = status.get("mlflow") or {}
    uri = mlflow.get("modelUri")
    if not uri:
        raise CommandError(f"{kind} {name} has no model yet ({status.get('phase') or 'Pending'}): "
                           "the best model is logged when the run succeeds")
    found: dict[str, Any] = {"kind": kind, "name": name, "modelUri": uri, "trackingUri": mlflow.get("trackingUri"),
                             "runId": mlflow.get("runId")}
    if args.download:
        reader = reader_for(target.api, mlflow.get("trackingUri") or "", target.namespace, args.tracking_uri)
        try:
            files = download_model(reader, uri, Path(args.download))
        except (ModelError, ProgressError) as exc:
            raise CommandError(str(exc)) from None
        found["files"] = [str(path) for path in files]
    if args.output == "json":
        print(json.dumps(found, indent=2))
        return EXIT_OK
    console = Console(highlight=False, soft_wrap=True)
    console.print(f"{kind} {name}: best model [bold]{uri}[/bold] (MLflow at {found['trackingUri']})")
    where = args.download or uri
    console.print(f"Load it with plain mlflow and torch: mlflow.pytorch.load_model({where!r}) "
                  "(a torch.export graph; its metadata says how to prepare images)")
    if args.download:
        console.print(f"{len(found['files'])} files in {args.download}")
    return EXIT_OK


def add_commands(commands: Any) -> None:
    """The cluster subcommands, on the `raylight` parser's subparsers."""
    def cluster_flags(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
        parser.add_argument("--context", help="kubeconfig context (default: the current one)")
        parser.add_argument("--output", "-o", choices=("text", "json"), default="text")

    get_parser = commands.add_parser("get", help="list TrainingJobs and TuneSweeps on the cluster")
    get_parser.add_argument("name", nargs="?", help="one resource: NAME or KIND/NAME (default: all)")
    get_parser.add_argument("-A", "--all-namespaces", action="store_true")
    cluster_flags(get_parser)
    get_parser.set_defaults(handler=guarded(get))

    wait_parser = commands.add_parser(
        "wait", help="wait until a run on the cluster ends",
        epilog=f"exit codes: {EXIT_OK} succeeded; {EXIT_FAILED} failed (the reason on stderr); "
               f"{EXIT_TIMEOUT} --timeout passed; 2 a wrong command line")
    wait_parser.add_argument("name", help="NAME or KIND/NAME (trainingjob/NAME, tunesweep/NAME)")
    wait_parser.add_argument("--timeout", type=float, default=0, help="give up after this many seconds (0: never)")
    cluster_flags(wait_parser)
    wait_parser.set_defaults(handler=guarded(wait))

    trials_parser = commands.add_parser("trials", help="the trials of a sweep on the cluster (from its MLflow runs)")
    trials_parser.add_argument("name", help="the TuneSweep's NAME")
    trials_parser.add_argument("--tracking-uri", help="reach MLflow here instead of the URI in the sweep's status "
                               "(an in-cluster Service is reached through the API server's proxy)")
    cluster_flags(trials_parser)
    trials_parser.set_defaults(handler=guarded(trials))

    model_parser = commands.add_parser("model", help="the best model of a run on the cluster: its URI, or its files")
    model_parser.add_argument("name", help="NAME or KIND/NAME")
    model_parser.add_argument("--download", metavar="DIR", help="write the model's files here")
    model_parser.add_argument("--tracking-uri", help="reach MLflow here instead of the URI in the status")
    cluster_flags(model_parser)
    model_parser.set_defaults(handler=guarded(model))

    from raylight.cluster_logs import add_logs_command

    add_logs_command(commands, cluster_flags, guarded)


def guarded(command: Any) -> Any:
    """The command, with a CommandError (or MLflow out of reach) said on stderr and exit 1 instead
    of a traceback."""
    from raylight.operator.progress import ProgressError

    def run(args: argparse.Namespace) -> int:
        try:
            return int(command(args))
        except (CommandError, ProgressError) as exc:
            message = str(exc) if isinstance(exc, CommandError) else f"{exc} (--tracking-uri reaches it another way)"
            Console(stderr=True, highlight=False, soft_wrap=True).print(f"[red]error[/red] {escape(message)}")
            return EXIT_FAILED
        except KeyboardInterrupt:
            return 130
    run.__doc__ = command.__doc__
    return run


def kubectl_plugin() -> None:
    """`kubectl raylight ...`: kubectl finds `kubectl-raylight` on PATH."""
    from raylight.cli import main

    sys.exit(main(prog="kubectl raylight"))
