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


def test_a_missing_image_secret_or_claim_and_a_pod_no_node_fits_say_why(
    node: Node, raylight: Release, namespace: str
) -> None:
    cluster = node.cluster
    node.results_volume(namespace)
    # An image the node does not have, which it may not pull (nothing is pulled here).
    missing = tiny_job("no-image", image="raylight.test/raylight-trainer:missing", imagePullPolicy="Never")
    # A worker that asks for a GPU this node does not have.
    gpu = tiny_job("no-gpu")
    gpu["spec"]["resources"] = {"workers": 1, "cpusPerWorker": 0.5, "gpusPerWorker": 1}
    # A Secret volume whose Secret does not exist: the pods are placed, and only the kubelet's
    # Events say why they never start.
    secret = tiny_job("no-secret")
    secret["spec"]["cluster"]["volumes"].append({"name": "creds", "secret": {"secretName": "raylight-absent"}})
    secret["spec"]["cluster"]["volumeMounts"].append({"name": "creds", "mountPath": "/creds"})
    # A volume on a claim that does not exist: the scheduler says so.
    claim = tiny_job("no-claim")
    claim["spec"]["cluster"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = "raylight-absent-claim"
    jobs = (missing, gpu, secret, claim)
    for doc in jobs:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))

    pulled = wait_for(lambda: (c := running_condition(node, "no-image", namespace)).get("reason")
                      == "ImagePullBackOff" and c, timeout=180, interval=2, what="the image problem in status")
    assert "raylight.test/raylight-trainer:missing" in pulled["message"]
    assert "ErrImageNeverPull" in pulled["message"]
    placed = wait_for(lambda: (c := running_condition(node, "no-gpu", namespace)).get("reason")
                      == "Unschedulable" and c, timeout=180, interval=2, what="the scheduling problem in status")
    assert "cannot be scheduled" in placed["message"] and "nvidia.com/gpu" in placed["message"]

    mount = wait_for(lambda: (c := running_condition(node, "no-secret", namespace)).get("reason")
                     == "FailedMount" and c, timeout=180, interval=2, what="the volume problem in status")
    assert 'secret "raylight-absent" not found' in mount["message"] and "cannot start" in mount["message"]

    unclaimed = wait_for(lambda: (c := running_condition(node, "no-claim", namespace)).get("reason")
                         == "Unschedulable" and c, timeout=180, interval=2, what="the missing claim in status")
    assert 'persistentvolumeclaim "raylight-absent-claim" not found' in unclaimed["message"]

    for name, words in (("no-image", "ErrImageNeverPull"), ("no-gpu", "Insufficient nvidia.com/gpu"),
                        ("no-secret", 'secret "raylight-absent" not found'),
                        ("no-claim", 'persistentvolumeclaim "raylight-absent-claim" not found')):
        described = cluster.kubectl("describe", "trainingjob", name, "-n", namespace).stdout
        assert words in described, described
        assert (cluster.get("trainingjob", name, namespace) or {})["status"]["phase"] == "Pending"
    events = [e for e in cluster.list("events", namespace) if e["involvedObject"]["kind"] == "TrainingJob"]
    assert {"ImagePullBackOff", "Unschedulable", "FailedMount"} <= {e["reason"] for e in events
                                                                   if e["type"] == "Warning"}

    for doc in jobs:
        cluster.kubectl("delete", "trainingjob", doc["metadata"]["name"], "-n", namespace)
    wait_for(lambda: not cluster.list("pods", namespace, "raylight.dev/kind=TrainingJob"), timeout=120,
             what="every pod of the four runs to go")
