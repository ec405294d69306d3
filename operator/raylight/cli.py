"""The `raylight` command: run manifests locally, validate them offline, follow runs on a cluster,
run the operator."""

from __future__ import annotations

import argparse
import os
import re
import sys

from rich.console import Console
from rich.markup import escape

from raylight.api import ManifestError, read_manifests
from raylight.api.console import EXIT_FAILED, EXIT_OK, add_run_arguments, print_errors

# `raylight run`'s driver lives with the trainer (a RayJob's entrypoint runs the same code in the
# head pod) and needs the trainer extra: it is imported by `run` alone, so that every other command,
# the operator included, works on a base install (`pip install raylight`).
TRAINER_EXTRA = "trainer"


def _validate(args: argparse.Namespace) -> int:
    out = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    failed = False
    for path in args.files:
        try:
            resources, notes = read_manifests(path)
        except ManifestError as exc:
            failed = True
            print_errors(err, exc.errors)
            continue
        for note in notes:
            out.print(f"[dim]skip[/dim] {escape(note)}")
        for resource in resources:
            out.print(f"[green]ok[/green] {escape(str(path))}: {resource.kind} {resource.metadata.name}")
    return EXIT_FAILED if failed else EXIT_OK


def missing_trainer_packages() -> list[str]:
    """The trainer extra's distributions that are not installed here (none where the package's
    metadata cannot be read: a source tree that was never installed runs as it is)."""
    from importlib.metadata import PackageNotFoundError, requires, version

    try:
        requirements = requires("raylight") or []
    except PackageNotFoundError:
        return []
    missing = []
    for requirement in requirements:
        name, _, marker = requirement.partition(";")
        if f'extra == "{TRAINER_EXTRA}"' not in marker.replace("'", '"'):
            continue
        distribution = re.match(r"\s*([A-Za-z0-9._-]+)", name).group(1)  # type: ignore[union-attr]
        try:
            version(distribution)
        except PackageNotFoundError:
            missing.append(distribution)
    return missing


def _run(args: argparse.Namespace) -> int:
    missing = missing_trainer_packages()
    if missing:
        said = (f"raylight run trains here, and this install lacks the trainer's packages ({', '.join(missing)}): "
                f"pip install 'raylight[{TRAINER_EXTRA}]'")
        Console(stderr=True, highlight=False, soft_wrap=True).print(f"[red]error[/red] {escape(said)}")
        return EXIT_FAILED
    from raylight_trainer.driver import run_command

    return run_command(args)


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
    add_run_arguments(run)
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


def console_main() -> None:
    """The `raylight` console script. A command that ran Ray (`raylight run`) skips the
    interpreter's slow teardown (see `exit_quickly`); the others exit as usual."""
    code = main()
    if "ray" in sys.modules:
        from raylight_trainer.driver import exit_quickly

        exit_quickly(code)
    sys.exit(code)


if __name__ == "__main__":
    console_main()
