"""The `raylight` command: run manifests locally, validate them offline, follow runs on a cluster,
run the operator."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

from raylight.api import ManifestError, SpecError, read_manifests
from raylight.api.manifest import no_resource_error

# Exit codes (README: "Exit codes"): 0 all good; 1 a manifest is invalid, or the run failed (or a
# trial did, unless --allow-failed-trials); 2 the command line itself is wrong (argparse's own).
EXIT_OK, EXIT_FAILED = 0, 1


def _print_errors(console: Console, errors: list[SpecError]) -> None:
    for error in errors:
        console.print(f"[red]error[/red] {escape(str(error))}", soft_wrap=True)


def _validate(args: argparse.Namespace) -> int:
    out = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    failed = False
    for path in args.files:
        try:
            resources, notes = read_manifests(path)
        except ManifestError as exc:
            failed = True
            _print_errors(err, exc.errors)
            continue
        for note in notes:
            out.print(f"[dim]skip[/dim] {escape(note)}")
        for resource in resources:
            out.print(f"[green]ok[/green] {escape(str(path))}: {resource.kind} {resource.metadata.name}")
    return EXIT_FAILED if failed else EXIT_OK


def _run(args: argparse.Namespace) -> int:
    # Progress and logs go to stderr, so that `--output json` leaves stdout machine-readable.
    console = Console(stderr=True, highlight=False)
    try:
        resources, notes = read_manifests(args.file)
        if not resources:
            raise no_resource_error(args.file, notes)
    except ManifestError as exc:
        _print_errors(console, exc.errors)
        if args.output == "json":
            print(json.dumps({"succeeded": False, "errors": [str(e) for e in exc.errors]}, indent=2))
        return EXIT_FAILED
    for note in notes:
        console.print(f"[dim]skip[/dim] {escape(note)}", soft_wrap=True)
    from raylight.local.runner import LocalOptions, print_summary, run_resource
    from raylight_trainer.data import DatasetError
    from raylight_trainer.interrupt import exit_code as interrupt_exit_code
    from raylight_trainer.interrupt import handling_signals, received_signal, signal_name
    from raylight_trainer.resources import ResourceError

    options = LocalOptions(
        tracking_uri=args.tracking_uri, data_dir=args.data_dir, storage_path=args.storage_path,
        num_cpus=args.num_cpus, fresh=args.fresh, verbose=args.verbose,
    )
    summaries: list[dict[str, Any]] = []
    with handling_signals():
        for resource in resources:
            # Inside a RayJob (RAY_ADDRESS set by KubeRay) the run joins that cluster: say so.
            where = f"the Ray cluster at {os.environ['RAY_ADDRESS']}" if os.environ.get("RAY_ADDRESS") \
                else "a local Ray instance"
            console.print(f"[bold]{resource.kind} {resource.metadata.name}[/bold]: starting on {where}")
            try:
                # Libraries print to stdout (MLflow's run links); keep it for the JSON summary alone.
                with contextlib.redirect_stdout(sys.stderr):
                    summary = run_resource(resource, options, console)
            except (ResourceError, DatasetError, RuntimeError) as exc:
                console.print(f"[red]error[/red] {escape(f'{args.file}: {exc}')}")
                return 1
            except KeyboardInterrupt:
                signum = received_signal() or signal.SIGINT
                console.print(f"[yellow]stopped at once[/yellow] by {signal_name(signum)}: run the same command to "
                              "resume from the last saved state")
                return interrupt_exit_code(signum)
            summaries.append(summary)
            if args.output == "text" or summary.get("interrupted"):
                print_summary(summary, console)  # on stderr: with -o json too, for who pressed Ctrl-C
            if summary.get("interrupted"):
                break
    if args.output == "json":
        print(json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=2, default=str))
    return run_exit_code(summaries, args.allow_failed_trials, console)


def run_exit_code(summaries: list[dict[str, Any]], allow_failed_trials: bool, console: Console) -> int:
    """`raylight run`'s verdict on its runs' summaries: 1 for a failed run, and for a sweep some of
    whose trials failed unless that is allowed (the operator's driver allows it: the sweep's
    status counts them)."""
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


def _crds(args: argparse.Namespace) -> int:
    from pathlib import Path

    from raylight.api.crd import write_crds

    for path in write_crds(Path(args.directory)):
        print(path)
    return 0


def _operator(args: argparse.Namespace) -> int:
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig  # kopf's own login reads it too
    os.environ["RAYLIGHT_PROGRESS_INTERVAL"] = str(args.progress_interval)
    import kopf

    from raylight.operator import handlers  # noqa: F401  (registers the handlers)
    from raylight.operator.builder import OperatorSettings
    from raylight.operator.kube import load_config

    load_config(args.kubeconfig)
    kopf.configure(verbose=args.verbose)
    memo = kopf.Memo(
        settings=OperatorSettings(trainer_image=args.trainer_image, mlflow_tracking_uri=args.mlflow_tracking_uri),
        metrics_port=args.metrics_port,
        lease=(args.leader_election_namespace, args.leader_election_id) if args.leader_election_id else None,
    )
    liveness = f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None
    # Every replica watches (its cache stays warm); the Lease decides which one reconciles.
    kopf.run(clusterwide=not args.namespace, namespaces=args.namespace or (), standalone=True,
             liveness_endpoint=liveness, memo=memo)
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("raylight")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser(prog: str = "raylight") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__,
        epilog="exit codes: 0 ok; 1 an invalid manifest, a failed run or (unless --allow-failed-trials) "
               "a failed trial; 2 a wrong command line")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a TrainingJob or TuneSweep manifest on a local Ray instance")
    run.add_argument("file", help="manifest YAML (the same file kubectl apply takes)")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlflow.db here)")
    run.add_argument("--data-dir", help="directory that relative data.path values are resolved against")
    run.add_argument("--storage-path", help="checkpoints and sweep state (default: ./raylight_results)")
    run.add_argument("--num-cpus", type=int, help="CPUs for the local Ray instance (default: all)")
    run.add_argument("--output", "-o", choices=("text", "json"), default="text",
                     help="json: a machine-readable summary on stdout")
    run.add_argument("--fresh", action="store_true", help="start over instead of resuming an interrupted run")
    run.add_argument("--verbose", action="store_true", help="show Ray's and the workers' logs")
    run.add_argument("--allow-failed-trials", action="store_true",
                     help="exit 0 when a sweep succeeded even though some of its trials failed")
    run.set_defaults(handler=_run)

    validate = commands.add_parser("validate", help="check manifests offline; print every error with its field")
    validate.add_argument("files", nargs="+")
    validate.set_defaults(handler=_validate)

    from raylight.cluster_commands import add_commands

    add_commands(commands)

    from raylight.operator.builder import DEFAULT_TRAINER_IMAGE

    env = os.environ
    operator = commands.add_parser("operator", help="run the Kubernetes operator (kopf)")
    operator.add_argument("--namespace", action="append",
                          help="watch this namespace (repeat for several; default: all namespaces)")
    operator.add_argument("--trainer-image", default=env.get("RAYLIGHT_TRAINER_IMAGE", DEFAULT_TRAINER_IMAGE),
                          help="image of RayJobs whose spec.cluster.image is unset")
    operator.add_argument("--mlflow-tracking-uri", default=env.get("RAYLIGHT_MLFLOW_TRACKING_URI"),
                          help="MLflow tracking URI of resources whose spec.mlflow.trackingUri is unset")
    operator.add_argument("--metrics-port", type=int, default=env.get("RAYLIGHT_METRICS_PORT", "8080"),
                          help="Prometheus /metrics port (0: off)")
    operator.add_argument("--health-port", type=int, default=env.get("RAYLIGHT_HEALTH_PORT", "8081"),
                          help="liveness /healthz port (0: off)")
    operator.add_argument("--leader-election-id", metavar="LEASE",
                          help="replicas elect one leader through this Lease; only it reconciles (default: none)")
    operator.add_argument("--leader-election-namespace", default="default",
                          help="namespace of the leader-election Lease (the operator's own)")
    operator.add_argument("--progress-interval", type=float, default=30.0,
                          help="seconds between reads of a running job's progress from MLflow")
    operator.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, else KUBECONFIG)")
    operator.add_argument("--verbose", action="store_true")
    operator.set_defaults(handler=_operator)

    crds = commands.add_parser("crds", help="write the CustomResourceDefinitions (generated from the spec models)")
    crds.add_argument("directory", help="where to write them (the repository keeps them in crds/)")
    crds.set_defaults(handler=_crds)
    return parser


def main(argv: list[str] | None = None, prog: str = "raylight") -> int:
    args = build_parser(prog).parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
