"""The GPU check's end-to-end part (bench/gpu/run --parts run) in its --cpu dry mode: the packed
sweep and the TrainingJob it runs on a GPU machine, run here on CPUs, so that it cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Runs its own Ray instances (one process each); no other instance may be alive meanwhile.
pytestmark = pytest.mark.slow


def test_the_dry_run_runs_the_packed_sweep_and_the_training_job(tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "PYTHON": sys.executable}
    done = subprocess.run([str(REPO / "bench" / "gpu" / "run"), "--cpu", "--parts", "run", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads((tmp_path / "check_cpu.json").read_text())["run"]
    assert [(r["kind"], r["exit_code"]) for r in runs] == [("TuneSweep", 0), ("TrainingJob", 0)], runs
    assert runs[0]["trials"]["total"] == 2 and runs[0]["trials"]["succeeded"] == 2
    assert all(r["wall_s"] > 0 and r["gpu_util_mean"] is None for r in runs)  # no nvidia-smi here
