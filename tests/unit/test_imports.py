"""The spec models and the CLI's validate path stay light: no torch, no ray, no mlflow."""

from __future__ import annotations

import subprocess
import sys


def test_api_and_cli_do_not_import_heavy_frameworks() -> None:
    code = (
        "import sys, raylight.api, raylight.cli; "
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray', 'mlflow', 'pytorch_lightning'}); "
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


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
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                if name.split(".")[0] == "raylight" and name != "raylight.api" \
                        and not name.startswith("raylight.api."):
                    offending.append(f"{path.name}:{node.lineno} imports {name}")
    assert not offending, offending
