"""A run's console output kept in MLflow (a real sqlite store): everything the process writes,
still written where it went, continued across attempts, ending with a failure's traceback.

Each case runs in a Python process of its own, whose fds 1 and 2 are its own (pytest's capture
points sys.stdout elsewhere)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from mlflow.tracking import MlflowClient

from raylight_trainer.tracking.logs import RESUMED_MARKER


def run_python(code: str, directory: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=directory, capture_output=True,
                          text=True, timeout=120, env=env)


def store(directory: Path) -> tuple[str, MlflowClient, str]:
    """A tracking URI, its client, and a new run."""
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("logs", str(directory / "artifacts"))
    return uri, client, client.create_run(experiment).info.run_id


def kept(client: MlflowClient, run_id: str, name: str, scratch: Path) -> str:
    return Path(client.download_artifacts(run_id, f"logs/{name}", str(scratch))).read_text()


def test_the_tee_copies_python_and_native_output_and_passes_it_on(tmp_path: Path) -> None:
    done = run_python("""
        import subprocess, sys
        from pathlib import Path
        from raylight_trainer.tracking.logs import OutputTee
        tee = OutputTee(Path("out.log"))
        tee.start()
        print("from python")
        print("to stderr", file=sys.stderr)
        subprocess.run(["sh", "-c", "echo from a child process; echo child stderr >&2"], check=True)
        tee.stop()
        print("after the tee")
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    copy = (tmp_path / "out.log").read_text()
    for line in ("from python", "to stderr", "from a child process", "child stderr"):
        assert line in copy
    assert "after the tee" not in copy
    assert done.stdout.splitlines() == ["from python", "from a child process", "after the tee"]
    assert "to stderr" in done.stderr and "child stderr" in done.stderr


def test_a_run_keeps_its_log_across_attempts_and_a_failure_ends_it(tmp_path: Path) -> None:
    uri, client, run_id = store(tmp_path)
    first = run_python(f"""
        import tempfile
        from pathlib import Path
        from mlflow.tracking import MlflowClient
        from raylight_trainer.tracking.logs import kept_output
        with kept_output("worker-0.log", {uri!r}, {run_id!r}) as keeper:
            keeper.say("attempt one, epoch 1")  # as EpochLine does: in MLflow before the epoch is reported
            with tempfile.TemporaryDirectory() as scratch:
                local = MlflowClient({uri!r}).download_artifacts({run_id!r}, "logs/worker-0.log", scratch)
                print("uploaded", Path(local).read_text() == "attempt one, epoch 1\\n")
    """, tmp_path)
    assert first.returncode == 0 and "uploaded True" in first.stdout, first.stderr
    second = run_python(f"""
        from raylight_trainer.tracking.logs import kept_output
        with kept_output("worker-0.log", {uri!r}, {run_id!r}):
            print("attempt two")
            raise ValueError("no such dataset: /data/missing")
    """, tmp_path)
    assert second.returncode == 1 and "ValueError: no such dataset" in second.stderr
    text = kept(client, run_id, "worker-0.log", tmp_path / "a")
    before, after = text.split(RESUMED_MARKER.decode())
    assert before == "attempt one, epoch 1\nuploaded True\n"
    # The traceback comes last, after what the attempt printed (stdout, buffered in a pipe).
    assert after.startswith("attempt two\nTraceback"), after
    assert after.rstrip().endswith("ValueError: no such dataset: /data/missing")


def test_a_log_without_a_run_yet_is_kept_once_the_run_is_named(tmp_path: Path) -> None:
    uri, client, run_id = store(tmp_path)
    done = run_python(f"""
        from raylight_trainer.tracking.logs import kept_output
        with kept_output("driver.log") as keeper:
            print("before the run exists", flush=True)
            keeper.upload()  # no run yet: nothing to do, nothing raised
            keeper.attach({uri!r}, {run_id!r})
            print("after", flush=True)
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert kept(client, run_id, "driver.log", tmp_path / "b") == "before the run exists\nafter\n"
