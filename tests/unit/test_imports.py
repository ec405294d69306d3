"""Imports that keep the parts apart: the spec models and the CLI stay light (no torch, ray or mlflow), the
trainer depends on `raylight.api` alone of ours, and its rooms import one way."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def loaded_by(imports: str, packages: set[str]) -> list[str]:
    """The modules of `packages` that a fresh interpreter has loaded after running `imports`."""
    code = f"import sys; {imports}; print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in sys.argv[1:])))"
    result = subprocess.run([sys.executable, "-c", code, *packages], capture_output=True, text=True, check=True)
    return [name for name in result.stdout.strip().split(",") if name]


def absolute_imports(node: object) -> list[str]:
    """The modules an `import` or absolute `from ... import` statement names (none for other nodes)."""
    import ast

    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0:
        return [node.module or ""]
    return []


def test_api_and_cli_do_not_import_heavy_frameworks() -> None:
    assert loaded_by("import raylight.api, raylight.cli", {"torch", "ray", "mlflow", "pytorch_lightning"}) == []


def test_the_cli_and_the_operator_load_nothing_of_the_trainer() -> None:
    """`pip install raylight` (no trainer extra) is what the operator image and a laptop that only
    talks to a cluster have: none of its commands but `run` may load `raylight_trainer` (whose
    modules import Ray, pyarrow, torch)."""
    imports = ("import raylight.cli, raylight.cluster_commands, raylight.cluster_logs, raylight.cluster_mlflow, "
               "raylight.operator.handlers; raylight.cli.build_parser()")
    assert loaded_by(imports, {"raylight_trainer"}) == []


# Where `raylight` may import the trainer: `raylight run` (it trains) and the exit after it.
TRAINER_IMPORTS_ALLOWED = {("cli.py", "_run"), ("cli.py", "console_main")}


def test_raylight_imports_the_trainer_only_where_run_needs_it() -> None:
    """Read from the source: an import of `raylight_trainer` anywhere in `raylight` but inside
    `cli._run` and `cli.console_main` fails here, naming the file, the function and the line."""
    import ast

    import raylight

    offending = []
    for path in sorted(Path(next(iter(raylight.__path__))).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        scopes = {id(inner): outer.name for outer in ast.walk(tree)
                  if isinstance(outer, ast.FunctionDef | ast.AsyncFunctionDef) for inner in ast.walk(outer)}
        for node in ast.walk(tree):
            if any(name.split(".")[0] == "raylight_trainer" for name in absolute_imports(node)):
                where = (path.name, scopes.get(id(node), "(module)"))
                if where not in TRAINER_IMPORTS_ALLOWED:
                    offending.append(f"{path.name}:{node.lineno} in {where[1]}")
    assert not offending, offending


def test_the_trainer_depends_on_the_api_alone_of_the_operator_package() -> None:
    """`raylight_trainer` runs in the trainer image: of `raylight` it may import `raylight.api` and
    nothing else (the operator, the CLI and the cluster commands depend on it, never the reverse).
    Read from the source, so imports inside functions count too."""
    import ast
    from pathlib import Path

    import raylight_trainer

    offending = []
    for path in sorted(Path(next(iter(raylight_trainer.__path__))).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for name in absolute_imports(node):
                if name.split(".")[0] == "raylight" and name != "raylight.api" \
                        and not name.startswith("raylight.api."):
                    offending.append(f"{path.name}:{node.lineno} imports {name}")
    assert not offending, offending


# The trainer's rooms and the rooms each may import (the top level, the driver, may import all):
# what runs in a pod never imports the console; models and data never import tuning or tracking
# (a model's pretrained weights are fetched through data's cache and fail with runtime's errors).
ROOMS_MAY_IMPORT = {
    "runtime": set(),
    "model": {"runtime", "data"},
    "data": {"runtime"},
    "tracking": {"runtime", "data"},
    "training": {"runtime", "data", "model", "tracking"},
    "tuning": {"runtime", "data", "model", "tracking", "training"},
    "console": {"runtime"},
}


def room_imports(package: Path) -> list[tuple[str, str, str, list[str]]]:
    """(file, importing room, imported room, names) for every import of one room by another,
    inside functions too, relative imports resolved; the package's top level counts as a room."""
    import ast

    found = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).parts
        room = parts[0] if len(parts) > 1 else "(top)"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = list(parts[:-1])[: len(parts) - node.level]
                module = [*base, *(node.module.split(".") if node.module else [])]
            elif (node.module or "").startswith("raylight_trainer."):
                module = (node.module or "").split(".")[1:]
            else:
                continue
            target = module[0] if len(module) > 1 or (module and (package / module[0]).is_dir()) else "(top)"
            if target != room:
                found.append((f"{'/'.join(parts)}:{node.lineno}", room, target, [a.name for a in node.names]))
    return found


def test_the_trainers_rooms_import_one_way_and_no_rooms_private_names() -> None:
    """`raylight_trainer`'s rooms (its sub-packages) import only the rooms below them, and only
    their public names: a back edge (say `data` importing `tracking`) or a reach into another
    room's `_private` name fails here, naming the file and line."""
    import raylight_trainer

    package = Path(next(iter(raylight_trainer.__path__)))
    assert set(ROOMS_MAY_IMPORT) == {p.name for p in package.iterdir() if (p / "__init__.py").exists()}
    back_edges = [f"{where}: {room} imports {target}" for where, room, target, _ in room_imports(package)
                  if room != "(top)" and target not in ROOMS_MAY_IMPORT[room]]
    private = [f"{where}: {name} from {target}" for where, _, target, names in room_imports(package)
               for name in names if name.startswith("_")]
    assert not back_edges, back_edges
    assert not private, private


def test_every_package_is_in_pyprojects_list() -> None:
    """The wheel (and so the images) holds only the packages pyproject.toml lists; an editable
    install finds the others anyway, so a new room left out would fail only in the pods."""
    import tomllib

    repo = Path(__file__).resolve().parents[2]
    settings = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(settings["packages"])
    on_disk = set()
    for name, directory in settings["package-dir"].items():
        for init in (repo / directory).rglob("__init__.py"):
            relative = init.parent.relative_to(repo / directory).parts
            on_disk.add(".".join([name, *relative]))
    assert on_disk == listed, f"not listed: {sorted(on_disk - listed)}; listed, not there: {sorted(listed - on_disk)}"
