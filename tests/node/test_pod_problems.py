"""Runs whose pods cannot start, on the real node: the status and `kubectl describe` say why, in
Kubernetes' own words (the kubelet's and the scheduler's), and deleting the run cleans up."""

from __future__ import annotations

from typing import Any

import yaml

from .conftest import Node, Release, wait_for


def tiny_job(name: str, **cluster: Any) -> dict[str, Any]:
    return {
        "apiVersion": "raylight.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
        "spec": {
            "model": {"preset": "vit-nano", "depth": 1, "imageSize": 16, "patchSize": 4},
            "data": {"dataset": "digits"},
            "training": {"maxEpochs": 1, "batchSize": 64},
            "resources": {"workers": 1, "cpusPerWorker": 0.5},
            "mlflow": {"experiment": f"problems-{name}"},
            "cluster": {
                "head": {"cpu": "250m", "memory": "2Gi"}, "workers": {"memory": "1Gi"},
                "volumes": [{"name": "results", "persistentVolumeClaim": {"claimName": "raylight-results"}}],
                "volumeMounts": [{"name": "results", "mountPath": "/results"}], "storagePath": "/results",
                **cluster,
            },
        },
    }


def running_condition(node: Node, name: str, namespace: str) -> dict[str, Any]:
    job = node.cluster.get("trainingjob", name, namespace) or {}
    conditions = (job.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Running"), {})


def test_an_image_that_is_not_there_and_a_pod_no_node_fits_say_why(
    node: Node, raylight: Release, namespace: str
) -> None:
    cluster = node.cluster
    node.results_volume(namespace)
    # An image the node does not have, which it may not pull (nothing is pulled here).
    missing = tiny_job("no-image", image="raylight.test/raylight-trainer:missing", imagePullPolicy="Never")
    # A worker that asks for a GPU this node does not have.
    gpu = tiny_job("no-gpu")
    gpu["spec"]["resources"] = {"workers": 1, "cpusPerWorker": 0.5, "gpusPerWorker": 1}
    for doc in (missing, gpu):
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))

    pulled = wait_for(lambda: (c := running_condition(node, "no-image", namespace)).get("reason")
                      == "ImagePullBackOff" and c, timeout=180, interval=2, what="the image problem in status")
    assert "raylight.test/raylight-trainer:missing" in pulled["message"]
    assert "ErrImageNeverPull" in pulled["message"]
    placed = wait_for(lambda: (c := running_condition(node, "no-gpu", namespace)).get("reason")
                      == "Unschedulable" and c, timeout=180, interval=2, what="the scheduling problem in status")
    assert "cannot be scheduled" in placed["message"] and "nvidia.com/gpu" in placed["message"]

    for name, words in (("no-image", "ErrImageNeverPull"), ("no-gpu", "Insufficient nvidia.com/gpu")):
        described = cluster.kubectl("describe", "trainingjob", name, "-n", namespace).stdout
        assert words in described, described
        assert (cluster.get("trainingjob", name, namespace) or {})["status"]["phase"] == "Pending"
    events = [e for e in cluster.list("events", namespace) if e["involvedObject"]["kind"] == "TrainingJob"]
    assert {"ImagePullBackOff", "Unschedulable"} <= {e["reason"] for e in events if e["type"] == "Warning"}

    for doc in (missing, gpu):
        cluster.kubectl("delete", "trainingjob", doc["metadata"]["name"], "-n", namespace)
    wait_for(lambda: not cluster.list("pods", namespace, "raylight.dev/kind=TrainingJob"), timeout=120,
             what="every pod of the two runs to go")
