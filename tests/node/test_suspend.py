"""A sweep suspended mid-run, as a person or Kueue suspends it: the Ray pods' preStop hook lets the
driver stop it the way Ctrl-C stops `raylight run` (MLflow runs KILLED, finished trials kept, the
sweep's state written), the operator's pod is replaced while it is suspended, and resuming
continues it: one parent run, one child run per trial, every epoch once."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml

from .conftest import OPERATOR_PODS, Node, Release, TrialRuns, mlflow_client, pods_of, results_cluster, wait_for

EPOCHS, TRIALS = 6, 3  # the smallest sweep with a finished trial and a cut one at the suspend


def small_sweep(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "raylight.dev/v1alpha1", "kind": "TuneSweep", "metadata": {"name": name},
        "spec": {
            "trial": {
                "model": {"preset": "vit-nano", "depth": 2, "imageSize": 16, "patchSize": 4},
                "data": {"dataset": "digits"},
                "training": {"maxEpochs": EPOCHS, "batchSize": 64, "learningRate": 3.0e-3, "seed": 0},
                "resources": {"workers": 1, "cpusPerWorker": 0.5},
            },
            "searchSpace": {"training.learningRate": {"loguniform": [1.0e-3, 5.0e-3]}},
            "objective": {"metric": "val_acc", "mode": "max"},
            "numSamples": TRIALS, "maxConcurrentTrials": 2,
            "scheduler": {"fifo": {}},
            "mlflow": {"experiment": f"suspend-{name}"},
            # Two trials at once: 4Gi of head is too little (Ray's OOM killer took the trials' actors).
            "cluster": results_cluster(head_memory="6Gi"),
        },
    }


def test_suspend_stops_a_sweep_gracefully_and_resume_continues_it_across_an_operator_restart(
    node: Node, raylight: Release, namespace: str
) -> None:
    cluster = node.cluster
    node.results_volume(namespace)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(small_sweep("pause")))
    ray_pods = "raylight.dev/name=pause,raylight.dev/role in (head,worker)"
    client = mlflow_client(raylight)

    def status() -> dict[str, Any]:
        return dict(((cluster.get("tunesweep", "pause", namespace) or {}).get("status")) or {})

    trials = TrialRuns(client, "suspend-pause")
    children, epochs = trials.children, trials.epochs

    def a_trial_done_and_one_midway() -> bool:  # read from MLflow: the status lags by a resync
        reported = [len(epochs(run)) for run in children()]
        return EPOCHS in reported and any(1 <= n <= EPOCHS // 2 for n in reported)

    wait_for(a_trial_done_and_one_midway, timeout=1200, interval=2,
             what="a finished trial and a running one past its first epoch")
    cluster.kubectl("patch", "tunesweep", "pause", "-n", namespace, "--type", "merge", "-p",
                    '{"spec": {"suspend": true}}')
    wait_for(lambda: status().get("phase") == "Suspended", timeout=300, interval=2, what="phase Suspended")
    wait_for(lambda: not pods_of(cluster, namespace, ray_pods), timeout=300, interval=2,
             what="the Ray pods to be deleted while suspended")

    # The driver stopped the sweep as Ctrl-C does: the parent run and the cut trials' runs KILLED,
    # the finished ones FINISHED, and its log (kept in MLflow) says why.
    parent_id = status()["mlflow"]["runId"]
    assert client.get_run(parent_id).info.status == "KILLED"
    cut = [r for r in children() if r.info.status == "KILLED"]
    finished = [r for r in children() if r.info.status == "FINISHED"]
    assert finished and cut and len(finished) + len(cut) == len(children()), \
        [(r.info.run_id, r.info.status) for r in children()]
    assert all(len(epochs(r)) == EPOCHS for r in finished)
    assert any(epochs(r) for r in cut), "no cut trial had reported an epoch"
    with tempfile.TemporaryDirectory() as scratch:
        driver_log = Path(client.download_artifacts(parent_id, "logs/driver.log", scratch)).read_text()
    assert "interrupted by SIGTERM" in driver_log, driver_log[-3000:]

    # The operator's pod is replaced while the run is suspended: the new one takes over.
    old = {p["metadata"]["name"] for p in pods_of(cluster, raylight.namespace, OPERATOR_PODS)}
    cluster.kubectl("delete", "pod", "-n", raylight.namespace, "-l", OPERATOR_PODS, "--wait=false")
    wait_for(lambda: any(p["metadata"]["name"] not in old and p["status"].get("phase") == "Running"
                         for p in pods_of(cluster, raylight.namespace, OPERATOR_PODS)),
             timeout=180, what="a new operator pod")
    cluster.kubectl("patch", "tunesweep", "pause", "-n", namespace, "--type", "merge", "-p",
                    '{"spec": {"suspend": false}}')
    waited = cluster.kubectl("wait", "-n", namespace, "--for=condition=Succeeded", "--timeout=1200s",
                             "tunesweep/pause", check=False)
    assert waited.returncode == 0, f"{waited.stderr}\nstatus: {status()}"
    assert len(cluster.list("rayjobs", namespace)) == 1

    # Resumed, not restarted: the same parent run, the cut trials' runs continued (not duplicated),
    # every trial's epochs once each, the finished trials not trained again.
    runs = children()
    assert status()["mlflow"]["runId"] == parent_id and client.get_run(parent_id).info.status == "FINISHED"
    assert len(runs) == TRIALS and {r.info.run_id for r in cut} <= {r.info.run_id for r in runs}
    assert all(r.info.status == "FINISHED" for r in runs), [(r.info.run_id, r.info.status) for r in runs]
    for run in runs:
        assert epochs(run) == sorted(set(epochs(run))) and len(epochs(run)) == EPOCHS, (run.info.run_id, epochs(run))
    assert status()["trials"]["succeeded"] == TRIALS
