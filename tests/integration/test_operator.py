"""The operator against the real API server (and the real KubeRay where it can act without a kubelet)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import yaml

from raylight.api import parse_resource
from raylight.operator.builder import MANIFEST_ANNOTATION, MANIFEST_VOLUME, build_rayjob
from raylight.operator.reconciler import APPLIED_HASH_ANNOTATION

from .conftest import REPO, Cluster, OperatorProcess, wait_for

SETTINGS_IMAGE = "raylight-trainer:test"


def gpu_sweep(name: str = "gpu-sweep", **spec: Any) -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "examples" / "cifar-sweep-gpu.yaml").read_text())
    doc["metadata"] = {"name": name}  # without the Kueue label: no Kueue here to admit it
    doc["spec"].update(spec)
    return dict(doc)


def status_of(cluster: Cluster, kind: str, name: str, namespace: str) -> dict[str, Any]:
    body = cluster.get(kind, name, namespace)
    return dict((body or {}).get("status") or {})


def conditions(status: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status.get("conditions", [])}


def contains(actual: Any, expected: Any, path: str = "") -> None:
    """Every field we set is on the server as we set it (the server may add defaults)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), path
        for key, value in expected.items():
            assert key in actual, f"{path}.{key} missing on the server"
            contains(actual[key], value, f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), path
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            contains(a, e, f"{path}[{index}]")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def rayjobs(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    return cluster.list("rayjobs", namespace, "app.kubernetes.io/managed-by=raylight-operator")


def test_sweep_lifecycle(kube_cluster: Cluster, namespace: str, namespaced_operator: OperatorProcess) -> None:
    operator = namespaced_operator
    assert kube_cluster.apply(gpu_sweep(), namespace).returncode == 0
    wait_for(lambda: kube_cluster.get("rayjob", "ts-gpu-sweep", namespace), what="the RayJob")
    body = kube_cluster.get("ts", "gpu-sweep", namespace)
    assert body is not None
    resource = parse_resource({k: body[k] for k in ("apiVersion", "kind", "metadata", "spec")})
    settings = _settings(operator)
    rayjob = kube_cluster.get("rayjob", "ts-gpu-sweep", namespace)
    contains(rayjob, build_rayjob(resource, settings))  # the RayJob is the builder's (golden-tested) output
    status = wait_for(lambda: status_of(kube_cluster, "ts", "gpu-sweep", namespace).get("phase") == "Pending"
                      and status_of(kube_cluster, "ts", "gpu-sweep", namespace), what="phase Pending")
    assert status["observedGeneration"] == body["metadata"]["generation"]
    assert status["rayJobName"] == "ts-gpu-sweep" and conditions(status)["SpecValid"] == "True"

    # KubeRay's progress, written as KubeRay writes it (no kubelet runs the pods here).
    kube_cluster.patch_status("rayjob", "ts-gpu-sweep", namespace, {
        "jobDeploymentStatus": "Running", "jobStatus": "RUNNING", "startTime": "2026-11-25T10:00:00Z"})
    wait_for(lambda: status_of(kube_cluster, "ts", "gpu-sweep", namespace).get("phase") == "Running",
             what="phase Running")
    status = status_of(kube_cluster, "ts", "gpu-sweep", namespace)
    assert conditions(status)["Running"] == "True" and status["startTime"] == "2026-11-25T10:00:00Z"
    assert kube_cluster.kubectl("get", "ts", "-n", namespace).stdout.splitlines()[1].split()[1] == "Running"
    # Status is written only when it changed: once MLflow was read (reachable, no run yet), the
    # progress reads (every second here) and the reconciles they cause leave the object alone.
    def version() -> str:
        return str((kube_cluster.get("ts", "gpu-sweep", namespace) or {})["metadata"]["resourceVersion"])

    wait_for(lambda: "MlflowReachable" in conditions(status_of(kube_cluster, "ts", "gpu-sweep", namespace)),
             what="the first progress read")
    before = version()
    time.sleep(3)
    assert version() == before, "the operator rewrote an unchanged status"
    scraped = operator.metrics()
    assert 'raylight_resources{kind="TuneSweep",phase="Running"} 1.0' in scraped, [
        line for line in scraped.splitlines() if "raylight_res" in line]

    kube_cluster.patch_status("rayjob", "ts-gpu-sweep", namespace, {
        "jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "endTime": "2026-11-25T11:00:00Z"})
    waited = kube_cluster.kubectl("wait", "--for=condition=Succeeded", "ts/gpu-sweep", "-n", namespace,
                                  "--timeout=30s", check=False)
    assert waited.returncode == 0, waited.stderr
    status = status_of(kube_cluster, "ts", "gpu-sweep", namespace)
    assert status["phase"] == "Succeeded" and status["completionTime"] == "2026-11-25T11:00:00Z"
    assert conditions(status) == {"SpecValid": "True", "Running": "False", "Suspended": "False",
                                  "Succeeded": "True", "Failed": "False", "MlflowReachable": "True"}
    events = kube_cluster.list("events", namespace)
    messages = [e["message"] for e in events if e["involvedObject"]["name"] == "gpu-sweep"]
    assert "New -> Pending: waiting for the Ray cluster's pods" in messages[0] or any(
        m.startswith("New -> Pending") for m in messages)
    assert any(m.startswith("Pending -> Running") for m in messages)
    assert any(m.startswith("Running -> Succeeded") for m in messages)

    # Someone deletes the finished RayJob (KubeRay's TTL removes only its Ray cluster): the sweep
    # keeps its status and is never re-run.
    kube_cluster.kubectl("delete", "rayjob", "ts-gpu-sweep", "-n", namespace)
    operator.kill()
    operator.start()  # on resume the operator sees the finished sweep again
    kube_cluster.kubectl("annotate", "ts", "gpu-sweep", "-n", namespace, "touched=1")
    assert wait_for(lambda: status_of(kube_cluster, "ts", "gpu-sweep", namespace).get("phase") == "Succeeded")
    with_metrics = operator.metrics()
    assert 'raylight_reconciles_total{kind="TuneSweep"}' in with_metrics
    assert kube_cluster.get("rayjob", "ts-gpu-sweep", namespace) is None, "a finished sweep was run again"


def _settings(operator: OperatorProcess) -> Any:
    from raylight.operator.builder import OperatorSettings

    return OperatorSettings(trainer_image=SETTINGS_IMAGE, mlflow_tracking_uri=operator.tracking_uri)


def apply_training_job(cluster: Cluster, namespace: str) -> None:
    """examples/trainingjob.yaml (vit-digits), once the operator has made its RayJob."""
    doc = yaml.safe_load((REPO / "examples" / "trainingjob.yaml").read_text())
    assert cluster.apply(doc, namespace).returncode == 0
    wait_for(lambda: cluster.get("rayjob", "tj-vit-digits", namespace), what="the RayJob")


def test_failed_rayjob_fails_the_resource_with_kuberays_reason(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    apply_training_job(kube_cluster, namespace)
    kube_cluster.patch_status("rayjob", "tj-vit-digits", namespace, {
        "jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded",
        "message": "The RayJob has passed the activeDeadlineSeconds."})
    waited = kube_cluster.kubectl("wait", "--for=condition=Failed", "tj/vit-digits", "-n", namespace,
                                  "--timeout=30s", check=False)
    assert waited.returncode == 0, waited.stderr
    failed = next(c for c in status_of(kube_cluster, "tj", "vit-digits", namespace)["conditions"]
                  if c["type"] == "Failed")
    assert failed["reason"] == "DeadlineExceeded" and "activeDeadlineSeconds" in failed["message"]
    warnings = [e for e in kube_cluster.list("events", namespace) if e["type"] == "Warning"]
    assert any("Running" not in e["message"] and "-> Failed" in e["message"] for e in warnings)


def test_suspend_and_resume(kube_cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    assert kube_cluster.apply(gpu_sweep(), namespace).returncode == 0
    wait_for(lambda: kube_cluster.get("rayjob", "ts-gpu-sweep", namespace), what="the RayJob")
    kube_cluster.patch_status("rayjob", "ts-gpu-sweep", namespace,
                              {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    wait_for(lambda: status_of(kube_cluster, "ts", "gpu-sweep", namespace).get("phase") == "Running")
    assert kube_cluster.apply(gpu_sweep(suspend=True), namespace).returncode == 0
    wait_for(lambda: (kube_cluster.get("rayjob", "ts-gpu-sweep", namespace) or {}).get("spec", {}).get("suspend"),
             what="the RayJob suspended")
    kube_cluster.patch_status("rayjob", "ts-gpu-sweep", namespace,
                              {"jobDeploymentStatus": "Suspended", "jobStatus": ""})
    wait_for(lambda: status_of(kube_cluster, "ts", "gpu-sweep", namespace).get("phase") == "Suspended",
             what="phase Suspended")
    assert conditions(status_of(kube_cluster, "ts", "gpu-sweep", namespace))["Suspended"] == "True"
    assert kube_cluster.apply(gpu_sweep(suspend=False), namespace).returncode == 0
    wait_for(lambda: (kube_cluster.get("rayjob", "ts-gpu-sweep", namespace) or {}).get("spec", {}).get("suspend")
             is False, what="the RayJob resumed")
    assert len(rayjobs(kube_cluster, namespace)) == 1


def test_invalid_spec_fails_and_creates_nothing(kube_cluster: Cluster, namespace: str,
                                                operator: OperatorProcess) -> None:
    # Valid for the schema (each value in bounds), not for the model: 30 px is not a multiple of 4 px.
    doc = gpu_sweep("bad-shape")
    doc["spec"]["trial"]["model"] = {"preset": "vit-nano", "imageSize": 30, "patchSize": 4}
    assert kube_cluster.apply(doc, namespace).returncode == 0
    status = wait_for(lambda: status_of(kube_cluster, "ts", "bad-shape", namespace).get("phase") == "Failed"
                      and status_of(kube_cluster, "ts", "bad-shape", namespace), what="phase Failed")
    spec_valid = next(c for c in status["conditions"] if c["type"] == "SpecValid")
    assert spec_valid["status"] == "False" and spec_valid["reason"] == "InvalidSpec"
    assert spec_valid["message"].startswith("spec.trial.model") and "multiple of patchSize" in spec_valid["message"]
    assert rayjobs(kube_cluster, namespace) == []
    assert any(e["reason"] == "InvalidSpec" for e in kube_cluster.list("events", namespace))


def test_delete_removes_what_it_created(kube_cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    assert kube_cluster.apply(gpu_sweep(), namespace).returncode == 0
    wait_for(lambda: kube_cluster.get("rayjob", "ts-gpu-sweep", namespace), what="the RayJob")
    kube_cluster.kubectl("delete", "ts", "gpu-sweep", "-n", namespace)
    # kube-controller-manager's garbage collector follows our ownerReferences.
    wait_for(lambda: not rayjobs(kube_cluster, namespace), timeout=60, what="the RayJob to be collected")


def test_operator_killed_mid_flow_converges(kube_cluster: Cluster, namespace: str,
                                            operator: OperatorProcess) -> None:
    assert kube_cluster.apply(gpu_sweep("a"), namespace).returncode == 0
    wait_for(lambda: kube_cluster.get("rayjob", "ts-a", namespace), what="the RayJob")
    operator.kill()
    # While it is down: KubeRay moves the first run on, a second sweep arrives.
    kube_cluster.patch_status("rayjob", "ts-a", namespace, {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    assert kube_cluster.apply(gpu_sweep("b"), namespace).returncode == 0
    operator.start()
    wait_for(lambda: status_of(kube_cluster, "ts", "a", namespace).get("phase") == "Running", what="a Running")
    wait_for(lambda: kube_cluster.get("rayjob", "ts-b", namespace), what="b's RayJob")
    operator.kill()
    operator.start()  # a restart with nothing new: still exactly one RayJob each
    wait_for(lambda: status_of(kube_cluster, "ts", "b", namespace).get("phase") == "Pending")
    names = sorted(r["metadata"]["name"] for r in rayjobs(kube_cluster, namespace))
    assert names == ["ts-a", "ts-b"]
    assert status_of(kube_cluster, "ts", "a", namespace)["phase"] == "Running"


def test_kuberay_turns_the_rayjob_into_gpu_pods(kube_cluster: Cluster, kuberay: str,
                                                operator: OperatorProcess) -> None:
    namespace = kuberay
    labels = (kube_cluster.get("namespace", namespace, namespace) or {})["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted", "KubeRay's pods are checked as restricted"
    kube_cluster.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                        "metadata": {"name": "datasets"},
                        "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}}},
                       namespace)
    assert kube_cluster.apply(gpu_sweep("on-kuberay"), namespace).returncode == 0

    def worker_pods() -> list[dict[str, Any]]:
        return kube_cluster.list("pods", namespace, "raylight.dev/name=on-kuberay,raylight.dev/role=worker")

    # 4 one-GPU trials at once: one worker pod of 4 GPUs holds them (gpusPerPod's default, 8, bounds it)
    pods = wait_for(lambda: len(worker_pods()) == 1 and worker_pods(), timeout=90, what="KubeRay's worker pods")
    for pod in pods:
        container = pod["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
        # KubeRay's memory-backed /dev/shm, which NCCL needs between the GPUs of a pod
        shm = next(m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm")
        assert next(v for v in pod["spec"]["volumes"] if v["name"] == shm)["emptyDir"]["medium"] == "Memory"
        assert container["image"] == SETTINGS_IMAGE
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
        assert pod["spec"]["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]
                  if "persistentVolumeClaim" in v]
        assert claims == ["datasets", "raylight-results"]
        assert pod["status"]["phase"] == "Pending"  # no kubelet here
    head = kube_cluster.list("pods", namespace, "raylight.dev/name=on-kuberay,raylight.dev/role=head")
    assert len(head) == 1
    assert "nvidia.com/gpu" not in head[0]["spec"]["containers"][0]["resources"].get("limits", {})
    # The trainer's manifest reaches the head pod through KubeRay: the annotation, and the volume
    # that shows it as a file.
    manifest = yaml.safe_load(head[0]["metadata"]["annotations"][MANIFEST_ANNOTATION])
    assert manifest["kind"] == "TuneSweep" and manifest["metadata"]["name"] == "on-kuberay"
    assert any(v["name"] == MANIFEST_VOLUME and "downwardAPI" in v for v in head[0]["spec"]["volumes"])
    rayjob = kube_cluster.get("rayjob", "ts-on-kuberay", namespace)
    assert rayjob is not None and rayjob["status"]["jobDeploymentStatus"] == "Initializing"
    status = status_of(kube_cluster, "ts", "on-kuberay", namespace)
    assert status["phase"] == "Pending"


def test_operator_imports_neither_torch_nor_ray() -> None:
    code = (
        "import sys, raylight.cli, raylight.operator.handlers, raylight.operator.progress;"
        "heavy = sorted(m for m in ('torch', 'ray', 'mlflow', 'pytorch_lightning') if m in sys.modules);"
        "print(json.dumps(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", "import json;" + code], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == []


def test_operator_never_fights_gitops_over_the_spec(kube_cluster: Cluster, namespace: str,
                                                    operator: OperatorProcess) -> None:
    # Argo CD (and kubectl) apply the manifest; the operator reconciles; the same apply is a no-op.
    manifest = str(REPO / "examples" / "cluster-quickstart.yaml")
    kube_cluster.kubectl("apply", "-n", namespace, "--server-side", "--field-manager", "argocd-controller",
                         "-f", manifest)
    wait_for(lambda: status_of(kube_cluster, "ts", "vit-digits-asha", namespace).get("phase"), what="a phase")
    body = json.loads(kube_cluster.kubectl("get", "ts", "vit-digits-asha", "-n", namespace, "-o", "json",
                                           "--show-managed-fields").stdout)
    assert {e["manager"] for e in body["metadata"]["managedFields"]} > {"argocd-controller"}
    for entry in body["metadata"]["managedFields"]:
        if entry["manager"] != "argocd-controller":
            assert "f:spec" not in entry.get("fieldsV1", {}), f"{entry['manager']} writes the spec"
    again = kube_cluster.kubectl("apply", "-n", namespace, "--server-side", "--field-manager", "argocd-controller",
                                 "-f", manifest)
    assert again.returncode == 0
    after = kube_cluster.get("ts", "vit-digits-asha", namespace)
    assert after is not None and after["metadata"]["generation"] == body["metadata"]["generation"]
    # A field another manager owns on the RayJob (e.g. Kueue's suspend, a label) survives our re-apply.
    # The operator re-applies only what changed: taking its applied-hash annotation away makes it
    # apply the whole RayJob again (the annotation comes back), and only then is the label checked.
    kube_cluster.kubectl("label", "rayjob", "ts-vit-digits-asha", "-n", namespace, "team=vision")
    kube_cluster.kubectl("annotate", "rayjob", "ts-vit-digits-asha", "-n", namespace, f"{APPLIED_HASH_ANNOTATION}-")

    def reapplied() -> dict[str, Any] | None:
        rayjob = kube_cluster.get("rayjob", "ts-vit-digits-asha", namespace) or {}
        return rayjob if APPLIED_HASH_ANNOTATION in (rayjob.get("metadata", {}).get("annotations") or {}) else None

    rayjob = wait_for(reapplied, what="the operator to apply the RayJob again")
    assert rayjob["metadata"]["labels"].get("team") == "vision", rayjob["metadata"]["labels"]


def test_what_the_rayjob_schema_refuses_fails_the_resource_and_leaves_nothing(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    # Volumes pass through as Kubernetes objects: KubeRay's RayJob schema is what checks them.
    doc = gpu_sweep("bad-volume")
    doc["spec"]["cluster"]["volumes"][0] = {"name": "datasets", "persistentVolumeClaim": {"claimName": 42}}
    assert kube_cluster.apply(doc, namespace).returncode == 0
    status = wait_for(lambda: (s := status_of(kube_cluster, "ts", "bad-volume", namespace)).get("phase") == "Failed"
                      and s, what="phase Failed")
    spec_valid = next(c for c in status["conditions"] if c["type"] == "SpecValid")
    assert spec_valid["message"].startswith("spec.cluster: KubeRay's RayJob refuses it")
    assert "claimName" in spec_valid["message"]
    assert rayjobs(kube_cluster, namespace) == []
