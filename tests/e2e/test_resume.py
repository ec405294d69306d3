"""Resume of an interrupted sweep: the driver is killed and run again, as a user would."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.e2e.test_sweep import child_runs, sweep_doc

# Runs its own Ray instances (one process each); no other instance may be alive meanwhile.
pytestmark = pytest.mark.slow


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path: Path, mlflow_server: str) -> None:
    """Kill the driver mid-sweep, run it again: finished trials stay as they were, no duplicate runs.

    Its trials are data-parallel (2 workers), so a sweep whose trials drive Ray Train worker groups
    stays covered; the other sweep tests' one-worker trials train in their Tune trials' processes."""
    # Three trials: two finish before the kill, the third is resumed (or started) by the second run.
    doc = sweep_doc("resume", numSamples=3, maxConcurrentTrials=1,
                    scheduler={"fifo": {}})
    doc["spec"]["trial"]["training"]["maxEpochs"] = 2
    doc["spec"]["trial"]["resources"] = {"workers": 2, "cpusPerWorker": 1}
    manifest = tmp_path / "sweep.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    command = [sys.executable, "-m", "raylight.cli", "run", str(manifest), "--tracking-uri", mlflow_server,
               "--num-cpus", "2", "--output", "json"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    first_log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=first_log)
    client = MlflowClient(mlflow_server)
    deadline = time.monotonic() + 400
    finished: dict[str, float] = {}
    while len(finished) < 2:
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no trial finished in time"
        time.sleep(2)
        experiment = client.get_experiment_by_name("e2e-resume")
        if experiment is None:
            continue
        for run in client.search_runs([experiment.experiment_id], "tags.`raylight.kind` = 'Trial'"):
            if run.data.metrics.get("epoch") == 2:
                finished.setdefault(run.data.tags["raylight.trial_id"], time.time())
    time.sleep(4)  # let Tune write its experiment state after the second trial ended
    killed_at = time.time()
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)

    # Its log is a file, not a terminal: a line per trial event and epoch, there as they happened.
    first_lines = (tmp_path / "first.log").read_text()
    for trial_id in finished:
        assert f"trial {trial_id} started" in first_lines, first_lines[-3000:]
        assert re.search(rf"trial {trial_id} epoch 2/2 val_acc=\d\.\d{{4}}", first_lines), first_lines[-3000:]
    # The last one may have been killed between its last epoch and Tune's word that it ended.
    ended = [t for t in finished if f"trial {t} finished: epoch 2/2" in first_lines]
    assert len(ended) >= len(finished) - 1, first_lines[-3000:]

    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    # The resumed run's log shows the epochs of every trial that had not finished before.
    shown = set(re.findall(r"trial (\S+) epoch 2/2", second.stderr))
    trial_lines = [line for line in second.stderr.splitlines() if " trial " in line]
    summary = yaml.safe_load(second.stdout)
    assert summary["resumed"] is True
    assert summary["trials"]["total"] == 3 and summary["trials"]["succeeded"] == 3

    experiment = client.get_experiment_by_name("e2e-resume")
    assert experiment is not None
    parents = client.search_runs([experiment.experiment_id], "tags.`raylight.kind` = 'TuneSweep'")
    assert len(parents) == 1 and parents[0].info.run_id == summary["mlflow"]["parentRunId"]
    children = child_runs(client, experiment.experiment_id, parents[0].info.run_id)
    trial_ids = [run.data.tags["raylight.trial_id"] for run in children]
    assert sorted(trial_ids) == sorted(set(trial_ids)) and len(trial_ids) == 3
    assert set(trial_ids) - set(finished) <= shown, (sorted(finished), trial_lines)
    for run in children:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert sorted(steps) == [1, 2], (run.data.tags["raylight.trial_id"], steps)
        if run.data.tags["raylight.trial_id"] in finished:
            latest = max(m.timestamp for m in client.get_metric_history(run.info.run_id, "val_acc"))
            assert latest / 1000 < killed_at, "a finished trial was trained again"
