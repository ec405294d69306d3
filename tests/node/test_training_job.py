"""A TrainingJob whose two DDP workers are two pods: shared checkpoints, a worker pod and the
operator's pod lost mid-run, suspend and resume, and a deleted resource that takes every pod with it."""

from __future__ import annotations

from typing import Any

import yaml

from .conftest import Node, Release, mlflow_client, pods_of, wait_for

EPOCHS = 8
OPERATOR_PODS = "app.kubernetes.io/name=raylight,app.kubernetes.io/component!=mlflow"


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
            "cluster": {
                "head": {"cpu": "500m", "memory": "4Gi"}, "workers": {"memory": "3Gi"},
                "volumes": [{"name": "results", "persistentVolumeClaim": {"claimName": "raylight-results"}}],
                "volumeMounts": [{"name": "results", "mountPath": "/results"}],
                "storagePath": "/results",
            },
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

    wait_for(lambda: epoch() >= 2, timeout=900, interval=2, what="epoch 2 reported in the status")
    victim = workers[0]["metadata"]["name"]
    cluster.kubectl("delete", "pod", victim, "-n", namespace, "--wait=false")
    # The operator's pod goes too, mid-run: its successor finds the run, makes no second RayJob.
    cluster.kubectl("delete", "pod", "-n", raylight.namespace, "-l", OPERATOR_PODS, "--wait=false")

    waited = cluster.kubectl("wait", "-n", namespace, "--for=condition=Succeeded", "--timeout=1200s",
                             "trainingjob/ddp", check=False, timeout=1260)
    job = cluster.get("trainingjob", "ddp", namespace) or {}
    assert waited.returncode == 0, f"{waited.stderr}\nstatus: {job.get('status')}"
    status = job["status"]
    assert status["epoch"] == EPOCHS - 1 or status["epoch"] == EPOCHS
    assert [r["metadata"]["name"] for r in cluster.list("rayjobs", namespace)] == ["tj-ddp"]

    # Checkpoints of both the first and the resumed attempt are on the shared volume.
    assert list((results / namespace / "ddp").rglob("checkpoint_*")), "no checkpoint on the shared volume"
    # One MLflow run whose val_acc history has every epoch once: resumed, not restarted.
    history = mlflow_client(raylight).get_metric_history(status["mlflow"]["runId"], "val_acc")
    steps = sorted(m.step for m in history)
    assert steps == sorted(set(steps)) and len(steps) == EPOCHS, steps

    # The resource owns everything it caused: deleting it removes every pod.
    cluster.kubectl("delete", "trainingjob", "ddp", "-n", namespace)
    wait_for(lambda: not pods_of(cluster, namespace, "raylight.dev/name=ddp"), timeout=180,
             what="the run's pods to be deleted")
    assert cluster.list("rayjobs", namespace) == []


def test_suspend_frees_the_pods_and_resume_continues_the_run_across_an_operator_restart(
    node: Node, raylight: Release, namespace: str
) -> None:
    cluster = node.cluster
    node.results_volume(namespace)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(ddp_job("pause")))
    ray_pods = "raylight.dev/name=pause,raylight.dev/role in (head,worker)"

    def status() -> dict[str, Any]:
        return dict(((cluster.get("trainingjob", "pause", namespace) or {}).get("status")) or {})

    wait_for(lambda: int(status().get("epoch") or 0) >= 2, timeout=900, interval=2, what="epoch 2")
    cluster.kubectl("patch", "trainingjob", "pause", "-n", namespace, "--type", "merge", "-p",
                    '{"spec": {"suspend": true}}')
    wait_for(lambda: status().get("phase") == "Suspended", timeout=300, interval=2, what="phase Suspended")
    wait_for(lambda: not pods_of(cluster, namespace, ray_pods), timeout=300, interval=2,
             what="the Ray pods to be deleted while suspended")

    # The operator's pod is replaced while the run is suspended: the new one takes over.
    old = {p["metadata"]["name"] for p in pods_of(cluster, raylight.namespace, OPERATOR_PODS)}
    cluster.kubectl("delete", "pod", "-n", raylight.namespace, "-l", OPERATOR_PODS, "--wait=false")
    wait_for(lambda: any(p["metadata"]["name"] not in old and p["status"].get("phase") == "Running"
                         for p in pods_of(cluster, raylight.namespace, OPERATOR_PODS)),
             timeout=180, what="a new operator pod")
    cluster.kubectl("patch", "trainingjob", "pause", "-n", namespace, "--type", "merge", "-p",
                    '{"spec": {"suspend": false}}')
    waited = cluster.kubectl("wait", "-n", namespace, "--for=condition=Succeeded", "--timeout=1200s",
                             "trainingjob/pause", check=False, timeout=1260)
    assert waited.returncode == 0, f"{waited.stderr}\nstatus: {status()}"
    assert len(cluster.list("rayjobs", namespace)) == 1

    # One MLflow run, resumed from its checkpoint: every epoch once, none trained twice.
    client = mlflow_client(raylight)
    runs = client.search_runs([client.get_experiment_by_name("ddp-pause").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == status()["mlflow"]["runId"]
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_acc")]
    assert sorted(steps) == sorted(set(steps)) and len(steps) == EPOCHS, steps
