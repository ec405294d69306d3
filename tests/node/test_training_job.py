"""A TrainingJob whose two DDP workers are two pods: shared checkpoints, a worker pod and the
operator's pod lost mid-run, and a deleted resource that takes every pod with it (test_suspend
suspends and resumes a sweep)."""

from __future__ import annotations

from typing import Any

import yaml

from .conftest import OPERATOR_PODS, Node, Release, mlflow_client, pods_of, results_cluster, wait_for

EPOCHS = 5  # a worker lost at epoch 2, three epochs after it


def ddp_job(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "raylight.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
        "spec": {
            "model": {"preset": "vit-nano", "depth": 2, "imageSize": 16, "patchSize": 4},
            "data": {"dataset": "digits"},
            "training": {"maxEpochs": EPOCHS, "batchSize": 64, "learningRate": 3.0e-3, "seed": 0},
            "resources": {"workers": 2, "cpusPerWorker": 0.5},
            "objective": {"metric": "val_acc", "mode": "max"},
            "faultTolerance": {"maxFailures": 2},
            "mlflow": {"experiment": f"ddp-{name}"},
            "cluster": results_cluster(head_memory="4Gi"),
        },
    }


def test_two_worker_pods_train_with_ddp_and_survive_losing_one(
    node: Node, raylight: Release, namespace: str
) -> None:
    cluster = node.cluster
    results = node.results_volume(namespace)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(ddp_job("ddp")))
    selector = "raylight.dev/name=ddp,raylight.dev/role=worker"

    def running_workers() -> list[dict[str, Any]]:
        pods = pods_of(cluster, namespace, selector)
        return [p for p in pods if p["status"].get("phase") == "Running"]

    workers = wait_for(lambda: len(running_workers()) == 2 and running_workers(), timeout=600,
                       what="two Running worker pods")
    assert len({p["metadata"]["name"] for p in workers}) == 2

    def epoch() -> int:
        job = cluster.get("trainingjob", "ddp", namespace) or {}
        return int((job.get("status") or {}).get("epoch") or 0)

    client = mlflow_client(raylight)

    def epochs_logged() -> int:  # read from MLflow: the status lags by a resync
        status = (cluster.get("trainingjob", "ddp", namespace) or {}).get("status") or {}
        run_id = status.get("mlflow", {}).get("runId")
        return len(client.get_metric_history(run_id, "val_acc")) if run_id else 0

    wait_for(lambda: epochs_logged() >= 2, timeout=900, interval=2, what="epoch 2 logged to MLflow")
    victim = workers[0]["metadata"]["name"]
    cluster.kubectl("delete", "pod", victim, "-n", namespace, "--wait=false")
    # The operator's pod goes too, mid-run: its successor finds the run, makes no second RayJob.
    cluster.kubectl("delete", "pod", "-n", raylight.namespace, "-l", OPERATOR_PODS, "--wait=false")

    waited = cluster.kubectl("wait", "-n", namespace, "--for=condition=Succeeded", "--timeout=1200s",
                             "trainingjob/ddp", check=False)
    job = cluster.get("trainingjob", "ddp", namespace) or {}
    assert waited.returncode == 0, f"{waited.stderr}\nstatus: {job.get('status')}"
    # The status reads MLflow once more as the run ends: the last epoch shows, not the one before.
    wait_for(lambda: epoch() == EPOCHS, timeout=60, interval=1, what=f"epoch {EPOCHS} in the final status")
    status = (cluster.get("trainingjob", "ddp", namespace) or {})["status"]
    assert [r["metadata"]["name"] for r in cluster.list("rayjobs", namespace)] == ["tj-ddp"]

    # The checkpoints are on the shared volume: those Ray Train recorded (checkpointsToKeep, 2, and
    # at most the one being written as the worker died); the strays of the lost worker were pruned.
    kept = [path for path in (results / namespace / "ddp").rglob("checkpoint_*") if path.is_dir()]
    assert 1 <= len(kept) <= 3, kept
    # One MLflow run whose val_acc history has every epoch once: resumed, not restarted.
    history = client.get_metric_history(status["mlflow"]["runId"], "val_acc")
    steps = sorted(m.step for m in history)
    assert steps == sorted(set(steps)) and len(steps) == EPOCHS, steps

    # The resource owns everything it caused: deleting it removes every pod.
    cluster.kubectl("delete", "trainingjob", "ddp", "-n", namespace)
    wait_for(lambda: not pods_of(cluster, namespace, "raylight.dev/name=ddp"), timeout=180,
             what="the run's pods to be deleted")
    assert cluster.list("rayjobs", namespace) == []
