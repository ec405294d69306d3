"""The `raylight` command: run manifests locally, validate them offline."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

from raylight.api import ManifestError, load_manifests


def _validate(args: argparse.Namespace) -> int:
    console = Console(stderr=False, highlight=False)
    failed = False
    for path in args.files:
        try:
            resources = load_manifests(path)
        except ManifestError as exc:
            failed = True
            for error in exc.errors:
                console.print(f"[red]error[/red] {escape(str(error))}")
            continue
        for resource in resources:
            console.print(f"[green]ok[/green] {path}: {resource.kind} {resource.metadata.name}")
    return 1 if failed else 0


def _run(args: argparse.Namespace) -> int:
    # Progress and logs go to stderr, so that `--output json` leaves stdout machine-readable.
    console = Console(stderr=True, highlight=False)
    try:
        resources = load_manifests(args.file)
    except ManifestError as exc:
        for error in exc.errors:
            console.print(f"[red]error[/red] {escape(str(error))}")
        return 2
    from raylight.local.runner import LocalOptions, print_summary, run_resource
    from raylight_trainer.data import DatasetError
    from raylight_trainer.resources import ResourceError

    options = LocalOptions(
        tracking_uri=args.tracking_uri, data_dir=args.data_dir, storage_path=args.storage_path,
        num_cpus=args.num_cpus, fresh=args.fresh, verbose=args.verbose,
    )
    summaries: list[dict[str, Any]] = []
    for resource in resources:
        console.print(f"[bold]{resource.kind} {resource.metadata.name}[/bold]: starting on a local Ray instance")
        try:
            # Libraries print to stdout (MLflow's run links); keep it for the JSON summary alone.
            with contextlib.redirect_stdout(sys.stderr):
                summary = run_resource(resource, options, console)
        except (ResourceError, DatasetError, RuntimeError) as exc:
            console.print(f"[red]error[/red] {escape(f'{args.file}: {exc}')}")
            return 1
        summaries.append(summary)
        if args.output == "text":
            print_summary(summary, console)
    if args.output == "json":
        print(json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=2, default=str))
    return 0 if all(s["succeeded"] for s in summaries) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raylight", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a TrainingJob or TuneSweep manifest on a local Ray instance")
    run.add_argument("file", help="manifest YAML (the same file kubectl apply takes)")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlflow.db here)")
    run.add_argument("--data-dir", help="directory that relative data.path values are resolved against")
    run.add_argument("--storage-path", help="checkpoints and sweep state (default: ./raylight_results)")
    run.add_argument("--num-cpus", type=int, help="CPUs for the local Ray instance (default: all)")
    run.add_argument("--output", choices=("text", "json"), default="text",
                     help="json: a machine-readable summary on stdout")
    run.add_argument("--fresh", action="store_true", help="start over instead of resuming an interrupted run")
    run.add_argument("--verbose", action="store_true", help="show Ray's and the workers' logs")
    run.set_defaults(handler=_run)

    validate = commands.add_parser("validate", help="check manifests offline; print every error with its field")
    validate.add_argument("files", nargs="+")
    validate.set_defaults(handler=_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
