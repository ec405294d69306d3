"""Pod Security "restricted" as the API server enforces it: every pod a run gets is admitted in a
namespace that enforces it, and a run whose pods admission refuses says so in its status."""

from __future__ import annotations

import copy
import json
from typing import Any

import yaml

from raylight.api import parse_resource
from raylight.operator.builder import OperatorSettings, build_rayjob
from tests.examples import CLUSTER_MANIFESTS

from .conftest import Cluster, OperatorProcess, wait_for
from .test_operator import gpu_sweep, status_of

RESTRICTED = "pod-security.kubernetes.io/enforce=restricted"
SETTINGS = OperatorSettings(trainer_image="raylight-trainer:test", mlflow_tracking_uri="http://mlflow:5000")


def role_pods(rayjob: dict[str, Any], namespace: str) -> dict[str, dict[str, Any]]:
    """The head, worker and submitter pods a RayJob's templates make (as KubeRay copies them)."""
    spec = rayjob["spec"]
    templates = {"head": spec["rayClusterSpec"]["headGroupSpec"]["template"],
                 "worker": spec["rayClusterSpec"]["workerGroupSpecs"][0]["template"],
                 "submitter": spec["submitterPodTemplate"]}
    pods = {}
    for role, template in templates.items():
        pod = {"apiVersion": "v1", "kind": "Pod", "spec": copy.deepcopy(template["spec"]),
               "metadata": {"name": f"{rayjob['metadata']['name']}-{role}", "namespace": namespace}}
        pod["spec"]["containers"][0].setdefault("image", "raylight-trainer:test")
        pods[role] = pod
    return pods


def admitted(cluster: Cluster, pod: dict[str, Any]) -> tuple[bool, str]:
    """Whether the API server (its admission included) takes the pod, without creating it."""
    result = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
    return result.returncode == 0, result.stderr


def test_every_examples_pods_are_admitted_where_restricted_is_enforced(kube_cluster: Cluster,
                                                                        namespace: str) -> None:
    kube_cluster.kubectl("label", "namespace", namespace, RESTRICTED)
    for path in CLUSTER_MANIFESTS:
        doc = yaml.safe_load(path.read_text())
        doc["metadata"] = {**doc["metadata"], "namespace": namespace, "uid": "0d5f2b5e-7c7a-4f0e-9a51-3b1c2d4e5f60"}
        for role, pod in role_pods(build_rayjob(parse_resource(doc), SETTINGS), namespace).items():
            ok, error = admitted(kube_cluster, pod)
            assert ok, f"{path.name}: the {role} pod is refused: {error}"
    # The check has teeth: the same pod as root is refused.
    doc = yaml.safe_load(CLUSTER_MANIFESTS[0].read_text())
    doc["metadata"] = {**doc["metadata"], "namespace": namespace, "uid": "0d5f2b5e-7c7a-4f0e-9a51-3b1c2d4e5f60"}
    doc["spec"].setdefault("cluster", {})["podSecurityContext"] = {"runAsNonRoot": False, "runAsUser": 0}
    ok, error = admitted(kube_cluster, role_pods(build_rayjob(parse_resource(doc), SETTINGS), namespace)["head"])
    assert not ok and "violates PodSecurity" in error and "runAsNonRoot" in error, error


def test_a_run_whose_pods_admission_refuses_says_why_within_a_minute(kube_cluster: Cluster, kuberay: str,
                                                                      operator: OperatorProcess) -> None:
    namespace = kuberay  # restricted, as the kuberay fixture labels it
    sweep = gpu_sweep("as-root")
    sweep["spec"]["cluster"]["podSecurityContext"] = {"runAsNonRoot": False, "runAsUser": 0}
    assert kube_cluster.apply(sweep, namespace).returncode == 0
    try:
        def refused() -> dict[str, Any] | None:
            status = status_of(kube_cluster, "ts", "as-root", namespace)
            found = {c["type"]: c for c in status.get("conditions", [])}
            return found if found.get("Running", {}).get("reason") == "PodsRefused" else None

        found = wait_for(refused, timeout=60, what="the refusal in the sweep's status")
        assert status_of(kube_cluster, "ts", "as-root", namespace)["phase"] == "Pending"
        message = found["Running"]["message"]
        assert message.startswith("RayCluster ts-as-root-") and "violates PodSecurity" in message, message
        assert found["PodsHealthy"]["status"] == "False" and found["PodsHealthy"]["reason"] == "PodsRefused"
        assert not kube_cluster.list("pods", namespace, "raylight.dev/name=as-root"), "admission made no pod"
    finally:
        kube_cluster.kubectl("delete", "ts", "as-root", "-n", namespace, "--wait=true", check=False)
