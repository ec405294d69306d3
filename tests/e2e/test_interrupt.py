"""Ctrl-C and SIGTERM sent to a real `raylight run`, then the same command again, checked in MLflow
as a user would: one parent run, one child run per trial, statuses, metric histories, exit codes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.e2e.test_sweep import child_runs, sweep_doc

# Runs its own Ray instances (one process each); no other instance may be alive meanwhile.
pytestmark = pytest.mark.slow


def start(manifest: Path, mlflow_server: str, log: Path) -> tuple[subprocess.Popen[str], list[str]]:
    command = [sys.executable, "-m", "raylight.cli", "run", str(manifest), "--tracking-uri", mlflow_server,
               "--num-cpus", "2", "--output", "json"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    process = subprocess.Popen(command, cwd=manifest.parent, env=env, start_new_session=True, text=True,
                               stdout=subprocess.PIPE, stderr=log.open("w"))
    return process, command


def wait_until(process: subprocess.Popen[str], log: Path, ready: Callable[[], bool], seconds: float = 400,
               interval: float = 1.0) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"not ready in {seconds} s: {log.read_text()[-3000:]}"
        time.sleep(interval)


def stop(process: subprocess.Popen[str], log: Path, signum: int, within: float = 120,
         group: bool = False) -> tuple[int, str, float]:
    """Send the signal (to the whole process group, Ray's processes included, as a terminal's Ctrl-C
    does; else to the command alone, as `kill` does); its exit code, stdout, and how long it took."""
    sent = time.monotonic()
    if group:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    try:
        out, _ = process.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError(f"still running {within} s after {signum}: {log.read_text()[-3000:]}") from None
    return process.returncode, out, time.monotonic() - sent


def runs_tagged(client: MlflowClient, experiment: str, query: str) -> list:
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], query) if found else []


def test_ctrl_c_stops_a_sweep_and_the_same_command_resumes_it(tmp_path: Path, mlflow_server: str) -> None:
    doc = sweep_doc("ctrl-c", numSamples=3, maxConcurrentTrials=1, scheduler={"fifo": {}})
    # Eight epochs of small batches: the second trial is midway for seconds, even on a fast machine.
    doc["spec"]["trial"]["training"].update(maxEpochs=8, batchSize=16)
    doc["spec"]["mlflow"]["registeredModelName"] = "ctrl-c-best"
    manifest = tmp_path / "sweep.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    client = MlflowClient(mlflow_server)
    log = tmp_path / "first.log"
    first, command = start(manifest, mlflow_server, log)

    def one_done_one_midway() -> bool:
        epochs = sorted(r.data.metrics.get("epoch", 0)
                        for r in runs_tagged(client, "e2e-ctrl-c", "tags.`raylight.kind` = 'Trial'"))
        return len(epochs) == 2 and 1 <= epochs[0] < 8 and epochs[1] == 8

    wait_until(first, log, one_done_one_midway, interval=0.2)
    code, out, _ = stop(first, log, signal.SIGINT, group=True)
    said = log.read_text()
    assert code == 130, said[-3000:]
    assert "interrupted by SIGINT: 1 of 3 trials ran to the end" in said and "Run the same command to resume" in said
    assert "Tuner.restore" not in said and "Trials did not complete" not in said, said[-3000:]
    summary = yaml.safe_load(out)
    assert summary["interrupted"] == "SIGINT" and summary["succeeded"] is False
    assert summary["mlflow"]["modelUri"] is None
    parent = client.get_run(summary["mlflow"]["parentRunId"])
    assert parent.info.status == "KILLED" and "best_val_acc" not in parent.data.metrics
    assert parent.data.tags["raylight.interrupted"] == "SIGINT"  # the operator's why, on a cluster
    statuses = sorted(r.info.status for r in child_runs(client, parent.info.experiment_id, parent.info.run_id))
    assert statuses == ["FINISHED", "KILLED"]
    assert not client.search_model_versions("name = 'ctrl-c-best'")

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = yaml.safe_load(second.stdout)
    assert resumed["resumed"] is True and resumed["interrupted"] is None
    assert resumed["trials"]["total"] == 3 and resumed["trials"]["succeeded"] == 3
    assert resumed["mlflow"]["parentRunId"] == parent.info.run_id
    assert len(runs_tagged(client, "e2e-ctrl-c", "tags.`raylight.kind` = 'TuneSweep'")) == 1
    children = child_runs(client, parent.info.experiment_id, parent.info.run_id)
    assert len(children) == 3 and len({r.data.tags["raylight.trial_id"] for r in children}) == 3
    for run in children:
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert sorted(steps) == list(range(1, 9)), (run.data.tags["raylight.trial_id"], steps)  # no gap, no repeat
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    assert "raylight.interrupted" not in client.get_run(parent.info.run_id).data.tags
    assert client.search_model_versions("name = 'ctrl-c-best'")


def job_manifest(directory: Path, name: str, epochs: int, batch_size: int = 64) -> Path:
    doc = {"apiVersion": "raylight.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
           "spec": {"model": {"preset": "vit-nano", "depth": 1}, "data": {"dataset": "digits"},
                    "training": {"maxEpochs": epochs, "batchSize": batch_size},
                    "mlflow": {"experiment": f"e2e-{name}"}}}
    manifest = directory / f"{name}.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    return manifest


def test_sigterm_stops_a_training_job_and_the_same_command_resumes_it(tmp_path: Path, mlflow_server: str) -> None:
    client = MlflowClient(mlflow_server)
    log = tmp_path / "first.log"
    # Epochs of small batches: SIGTERM lands mid-run, even on a fast machine.
    first, command = start(job_manifest(tmp_path, "sigterm", 6, batch_size=16), mlflow_server, log)

    def trained_two_epochs() -> bool:
        return any(r.data.metrics.get("epoch", 0) >= 2 for r in runs_tagged(client, "e2e-sigterm", ""))

    wait_until(first, log, trained_two_epochs, interval=0.2)
    code, out, _ = stop(first, log, signal.SIGTERM)
    assert code == 143, log.read_text()[-3000:]
    summary = yaml.safe_load(out)
    assert summary["interrupted"] == "SIGTERM" and "interrupted by SIGTERM: after" in log.read_text()
    run = client.get_run(summary["mlflow"]["runId"])
    assert run.info.status == "KILLED" and run.data.tags["raylight.state"] == "interrupted"
    assert run.data.tags["raylight.interrupted"] == "SIGTERM"

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = yaml.safe_load(second.stdout)
    assert resumed["mlflow"]["runId"] == run.info.run_id and resumed["state"] == "succeeded"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6], steps  # resumed from its checkpoint: no epoch twice
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    assert "raylight.interrupted" not in client.get_run(run.info.run_id).data.tags


class StallingProxy:
    """A TCP proxy to a server (MLflow's) that forwards both ways until `stall()`, then holds every
    byte: requests on connections already open, and new ones, go unanswered, as from a server that
    hangs or a network that drops its packets."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.stalled, self.closed = threading.Event(), threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def stall(self) -> None:
        self.stalled.set()

    def close(self) -> None:
        self.closed.set()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                while self.stalled.is_set() and not self.closed.is_set():
                    time.sleep(0.05)
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)  # a side that closed is seen closed by the other
        except OSError:  # a side that failed fails the other
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.close()


def test_a_second_ctrl_c_stops_at_once_when_the_graceful_stop_hangs(tmp_path: Path, mlflow_server: str) -> None:
    """The first Ctrl-C stops the sweep where it can resume, which ends with MLflow's records; with
    MLflow not answering, that stop hangs, and the second Ctrl-C must end the command at once."""
    doc = sweep_doc("twice", numSamples=2, maxConcurrentTrials=1, scheduler={"fifo": {}})
    doc["spec"]["trial"]["training"]["maxEpochs"] = 50
    manifest = tmp_path / "sweep.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    client = MlflowClient(mlflow_server)
    log = tmp_path / "run.log"
    proxy = StallingProxy(mlflow_server)
    try:
        process, _ = start(manifest, proxy.url, log)
        wait_until(process, log, lambda: bool(runs_tagged(client, "e2e-twice", "tags.`raylight.kind` = 'Trial'")))
        proxy.stall()
        os.killpg(process.pid, signal.SIGINT)
        time.sleep(3)
        assert process.poll() is None, f"the graceful stop did not wait on MLflow: {log.read_text()[-3000:]}"
        code, _, took = stop(process, log, signal.SIGINT, within=60, group=True)
    finally:
        proxy.close()
    said = log.read_text()
    assert code == 130 and "stopped at once by SIGINT" in said, said[-3000:]
    assert "Traceback" not in said, said[-3000:]
    assert took < 30, f"{took:.0f} s after the second Ctrl-C"


def test_ctrl_c_between_trials_then_sigterm_while_the_best_model_is_logged(tmp_path: Path, mlflow_server: str) -> None:
    """The other moments a signal can land: between two trials (the sweep resumes with the next one),
    and after the last trial, while the best model is logged (the run finishes its record: a
    complete run, no half-logged model, nothing left to resume)."""
    doc = sweep_doc("moments", numSamples=2, maxConcurrentTrials=1, scheduler={"fifo": {}})
    # Small batches: the second trial's first epoch takes a second or more, the moment to land in.
    doc["spec"]["trial"]["training"].update(maxEpochs=2, batchSize=8)
    doc["spec"]["mlflow"]["registeredModelName"] = "moments-best"
    manifest = tmp_path / "sweep.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    client = MlflowClient(mlflow_server)

    def trial_runs() -> list:
        return runs_tagged(client, "e2e-moments", "tags.`raylight.kind` = 'Trial'")

    log = tmp_path / "first.log"
    first, _ = start(manifest, mlflow_server, log)

    def between_trials() -> bool:  # the first trial has reported its last epoch, the second none yet
        epochs = [r.data.metrics.get("epoch") for r in trial_runs()]
        return epochs.count(2) == 1 and all(not epoch for epoch in epochs if epoch != 2)

    wait_until(first, log, between_trials, interval=0.2)
    code, out, _ = stop(first, log, signal.SIGINT, group=True)
    said = log.read_text()
    assert code == 130 and "interrupted by SIGINT" in said, said[-3000:]
    summary = yaml.safe_load(out)
    assert summary["trials"]["total"] <= 2 and summary["mlflow"]["modelUri"] is None
    parent_id = summary["mlflow"]["parentRunId"]
    assert client.get_run(parent_id).info.status == "KILLED"

    log = tmp_path / "second.log"
    second, _ = start(manifest, mlflow_server, log)

    def logging_the_best_model() -> bool:
        # The trials' runs are ended after Tune's last trial, just before the best model is logged.
        runs = trial_runs()
        return len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)

    wait_until(second, log, logging_the_best_model, interval=0.2)
    code, out, _ = stop(second, log, signal.SIGTERM)
    said = log.read_text()
    assert code == 0 and "SIGTERM received after the training ended" in said, said[-3000:]
    finished = yaml.safe_load(out)
    assert finished["resumed"] is True and finished["interrupted"] is None
    assert finished["mlflow"]["parentRunId"] == parent_id and finished["mlflow"]["modelUri"]
    assert client.get_run(parent_id).info.status == "FINISHED"
    assert len(client.search_model_versions("name = 'moments-best'")) == 1
    runs = trial_runs()
    assert len(runs) == 2 and len(runs_tagged(client, "e2e-moments", "tags.`raylight.kind` = 'TuneSweep'")) == 1
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert sorted(steps) == [1, 2], (run.data.tags["raylight.trial_id"], steps)
