"""A sweep whose head pod is deleted mid-trial: the pod's preStop hook stops the driver gracefully,
the Ray job ends, and KubeRay retries the run on a new Ray cluster (backoffLimit 1), which resumes
it: one parent run, one child run per trial, every epoch once. (Without a retry left the resource
is Failed and says why: tests/integration/test_reconcile.py.)"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml

from .conftest import Node, Release, TrialRuns, mlflow_client, pods_of, wait_for
from .test_suspend import small_sweep

TRIALS = 2  # both at once: the head goes while each is midway
# Enough epochs that a trial is cut midway (after its first, by its third) and the resumed one
# has more to train: a test of the resume, not of training (its time is the node's budget).
EPOCHS = 6


def test_a_deleted_head_pod_interrupts_the_sweep_and_kuberays_retry_resumes_it(
    node: Node, raylight: Release, namespace: str
) -> None:
    cluster = node.cluster
    node.results_volume(namespace)
    doc = small_sweep("headless")
    doc["spec"]["numSamples"] = TRIALS
    doc["spec"]["trial"]["training"]["maxEpochs"] = EPOCHS
    doc["spec"]["cluster"]["backoffLimit"] = 1  # KubeRay's retry on a new Ray cluster is what resumes it
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))
    client = mlflow_client(raylight)

    def status() -> dict[str, Any]:
        return dict(((cluster.get("tunesweep", "headless", namespace) or {}).get("status")) or {})

    trials = TrialRuns(client, "suspend-headless")
    children, epochs = trials.children, trials.epochs

    wait_for(lambda: any(1 <= len(epochs(run)) <= EPOCHS // 2 for run in children()), timeout=1200, interval=2,
             what="a trial past its first epoch")
    head = pods_of(cluster, namespace, "raylight.dev/name=headless,raylight.dev/role=head")
    cluster.kubectl("delete", "pod", head[0]["metadata"]["name"], "-n", namespace, "--wait=false")
    waited = cluster.kubectl("wait", "-n", namespace, "--for=condition=Succeeded", "--timeout=1500s",
                             "tunesweep/headless", check=False)
    rayjob = (cluster.list("rayjobs", namespace) or [{}])[0]
    assert waited.returncode == 0, f"{waited.stderr}\nstatus: {status()}\nrayjob: {rayjob.get('status')}"
    # Resumed, not restarted: the cut trials' runs continued, each epoch once, and the driver's log
    # (kept in MLflow across both Ray clusters) says what happened.
    runs = children()
    parent_id = status()["mlflow"]["runId"]
    assert len(runs) == TRIALS and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        assert epochs(run) == sorted(set(epochs(run))) and len(epochs(run)) == EPOCHS, (run.info.run_id, epochs(run))
    with tempfile.TemporaryDirectory() as scratch:
        driver_log = Path(client.download_artifacts(parent_id, "logs/driver.log", scratch)).read_text()
    assert "interrupted by SIGTERM" in driver_log and "----- resumed -----" in driver_log, driver_log[-3000:]
    assert rayjob["status"].get("failed") == 1 and rayjob["status"].get("succeeded") == 1, rayjob["status"]
