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
