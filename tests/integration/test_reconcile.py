"""The one reconcile per resource, against the real API server: the races and failures it must survive.

KubeRay cannot run pods here (no kubelet), so the tests write the RayJob's and pods' status as
KubeRay and the kubelet would; tests/node shows the same against real pods.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

from raylight.api import BestTrial, SweepProgress, TrialCounts
from raylight.api.tags import TAG_ERROR, TAG_INTERRUPTED, TAG_PROGRESS, TAG_UID
from tests.conftest import MlflowServer

from .conftest import REPO, Cluster, OperatorProcess, wait_for
from .test_operator import conditions, gpu_sweep, rayjobs, status_of
from .webhook import RayJobPolicy, rayjob_webhook


@pytest.fixture
def policy(kube_cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[RayJobPolicy]:
    with rayjob_webhook(kube_cluster, namespace, tmp_path) as found:
        # The API server picks a new webhook up within a second or two: wait until it calls it.
        probe = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "probe"},
                 "spec": {"entrypoint": "true"}}

        def called() -> bool:
            kube_cluster.kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-",
                                 input=json.dumps(probe), check=False)
            return bool(found.seen)

        wait_for(called, timeout=30, interval=0.5, what="the API server to call the webhook")
        yield found


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def test_a_rayjob_change_during_a_slow_write_is_not_lost(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, policy: RayJobPolicy
) -> None:
    assert kube_cluster.apply(gpu_sweep(), namespace).returncode == 0
    wait_for(lambda: kube_cluster.get("rayjob", "ts-gpu-sweep", namespace), what="the RayJob")
    kube_cluster.patch_status("rayjob", "ts-gpu-sweep", namespace, {"jobDeploymentStatus": "Initializing"})
    wait_for(lambda: status_of(kube_cluster, "ts", "gpu-sweep", namespace).get("phase") == "Pending")
    # A change the operator passes on to the RayJob (Kueue's annotations do), written while a slow
    # admission policy holds the operator's apply for 4 s; KubeRay moves the job on meanwhile.
    policy.hold_s = 4.0
    kube_cluster.kubectl("annotate", "ts", "gpu-sweep", "-n", namespace, "kueue.x-k8s.io/note=rerouted")
    assert policy.held.wait(30), f"the operator never re-applied the RayJob; the webhook saw {policy.seen}"
    kube_cluster.patch_status("rayjob", "ts-gpu-sweep", namespace,
                              {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    policy.hold_s = 0.0
    # The write that read the RayJob before the change must not win: the status follows the RayJob.
    wait_for(lambda: status_of(kube_cluster, "ts", "gpu-sweep", namespace).get("phase") == "Running",
             timeout=20, what="phase Running after the slow write")
    time.sleep(6)
    assert status_of(kube_cluster, "ts", "gpu-sweep", namespace)["phase"] == "Running"
    rayjob = kube_cluster.get("rayjob", "ts-gpu-sweep", namespace)
    assert rayjob is not None and rayjob["metadata"]["annotations"]["kueue.x-k8s.io/note"] == "rerouted"


def test_a_rayjob_deleted_mid_run_is_created_again(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    assert kube_cluster.apply(gpu_sweep(), namespace).returncode == 0
    first = wait_for(lambda: kube_cluster.get("rayjob", "ts-gpu-sweep", namespace), what="the RayJob")
    kube_cluster.patch_status("rayjob", "ts-gpu-sweep", namespace,
                              {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    wait_for(lambda: status_of(kube_cluster, "ts", "gpu-sweep", namespace).get("phase") == "Running")
    kube_cluster.kubectl("delete", "rayjob", "ts-gpu-sweep", "-n", namespace)

    def recreated() -> dict[str, Any] | None:
        found = kube_cluster.get("rayjob", "ts-gpu-sweep", namespace)
        return found if found and found["metadata"]["uid"] != first["metadata"]["uid"] else None

    wait_for(recreated, timeout=20, what="the RayJob created again")
    status = status_of(kube_cluster, "ts", "gpu-sweep", namespace)
    assert status["phase"] == "Pending"
    running = condition(status, "Running")
    assert running["reason"] == "RayJobRecreated" and "resumes from its last checkpoint" in running["message"]
    warnings = [e for e in kube_cluster.list("events", namespace) if e["reason"] == "RayJobRecreated"]
    assert warnings and warnings[0]["type"] == "Warning" and warnings[0]["involvedObject"]["kind"] == "TuneSweep"
    assert len(rayjobs(kube_cluster, namespace)) == 1


def test_a_policy_refusal_is_said_and_is_not_a_spec_error(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, policy: RayJobPolicy
) -> None:
    policy.refusal = "denied by policy gpu-quota: team vision is over its GPU quota"
    assert kube_cluster.apply(gpu_sweep(), namespace).returncode == 0
    status = wait_for(lambda: (s := status_of(kube_cluster, "ts", "gpu-sweep", namespace)).get("conditions") and s,
                      what="a status")
    wait_for(lambda: condition(status_of(kube_cluster, "ts", "gpu-sweep", namespace), "Running").get("reason")
             == "RayJobRefused", what="the refusal in status")
    status = status_of(kube_cluster, "ts", "gpu-sweep", namespace)
    assert status["phase"] == "Pending" and condition(status, "SpecValid")["status"] == "True"
    assert "over its GPU quota" in condition(status, "Running")["message"]
    assert rayjobs(kube_cluster, namespace) == []
    policy.refusal = None  # the quota grows; the next try (or any change) goes through
    kube_cluster.kubectl("annotate", "ts", "gpu-sweep", "-n", namespace, "touched=1")
    wait_for(lambda: kube_cluster.get("rayjob", "ts-gpu-sweep", namespace), what="the RayJob after the refusal")


def _pod(name: str, sweep: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"raylight.dev/kind": "TuneSweep", "raylight.dev/name": sweep}},
            "spec": {"containers": [{"name": "ray-worker", "image": "raylight-trainer:missing"}]}}


def test_a_pod_that_cannot_pull_its_image_explains_pending(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    assert kube_cluster.apply(gpu_sweep(), namespace).returncode == 0
    wait_for(lambda: kube_cluster.get("rayjob", "ts-gpu-sweep", namespace), what="the RayJob")
    kube_cluster.apply(_pod("ts-gpu-sweep-worker-x", "gpu-sweep"), namespace)
    kube_cluster.patch_status("pod", "ts-gpu-sweep-worker-x", namespace, {"phase": "Pending", "containerStatuses": [{
        "name": "ray-worker", "image": "raylight-trainer:missing", "imageID": "", "ready": False, "restartCount": 0,
        "state": {"waiting": {"reason": "ImagePullBackOff",
                              "message": 'Back-off pulling image "raylight-trainer:missing"'}}}]})
    wait_for(lambda: condition(status_of(kube_cluster, "ts", "gpu-sweep", namespace), "Running").get("reason")
             == "ImagePullBackOff", what="ImagePullBackOff in status")
    status = status_of(kube_cluster, "ts", "gpu-sweep", namespace)
    assert condition(status, "PodsHealthy")["status"] == "False"
    assert "cannot pull image raylight-trainer:missing" in condition(status, "Running")["message"]
    described = kube_cluster.kubectl("describe", "ts", "gpu-sweep", "-n", namespace).stdout
    assert "ImagePullBackOff" in described and "cannot pull image raylight-trainer:missing" in described


@pytest.fixture
def own_mlflow(tmp_path: Path) -> Iterator[MlflowServer]:
    root = tmp_path / "mlflow"
    root.mkdir()
    server = MlflowServer(root)
    server.start()
    yield server
    server.stop()


def test_mlflow_down_for_a_minute_leaves_reconciles_working_and_status_catches_up(
    kube_cluster: Cluster, namespace: str, own_mlflow: MlflowServer, tmp_path: Path
) -> None:
    operator = OperatorProcess(kube_cluster, own_mlflow.uri, tmp_path / "operator.log")
    operator.start()
    try:
        _outage(kube_cluster, namespace, own_mlflow, operator)
    finally:
        operator.stop()


def _outage(kube_cluster: Cluster, namespace: str, server: MlflowServer, operator: OperatorProcess) -> None:
    sweeps = [gpu_sweep(f"s{i}") for i in range(3)]
    for doc in sweeps:
        doc["spec"]["mlflow"]["experiment"] = f"outage-{uuid.uuid4().hex[:6]}"
        assert kube_cluster.apply(doc, namespace).returncode == 0
    for doc in sweeps:
        name = doc["metadata"]["name"]
        wait_for(lambda n=name: kube_cluster.get("rayjob", f"ts-{n}", namespace), what="the RayJobs")
        kube_cluster.patch_status("rayjob", f"ts-{name}", namespace,
                                  {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    client = MlflowClient(server.uri)
    parents = {}
    for doc in sweeps:  # the sweep drivers' parent runs, tagged as the trainer tags them
        name = doc["metadata"]["name"]
        uid = kube_cluster.get("ts", name, namespace)["metadata"]["uid"]  # type: ignore[index]
        experiment = client.create_experiment(doc["spec"]["mlflow"]["experiment"])
        parents[name] = client.create_run(experiment, tags={TAG_UID: uid}).info.run_id
    for doc in sweeps:
        wait_for(lambda n=doc["metadata"]["name"]: status_of(kube_cluster, "ts", n, namespace)
                 .get("mlflow", {}).get("runId") == parents[n], timeout=30, what="the parent run in status")

    server.stop()
    down_at = time.monotonic()
    wait_for(lambda: all(condition(status_of(kube_cluster, "ts", d["metadata"]["name"], namespace),
                                   "MlflowReachable").get("status") == "False" for d in sweeps),
             timeout=30, what="MlflowReachable False on every sweep")
    # Reconciles go on: KubeRay finishes one sweep and the status follows at once.
    kube_cluster.patch_status("rayjob", "ts-s0", namespace,
                              {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"})
    wait_for(lambda: status_of(kube_cluster, "ts", "s0", namespace).get("phase") == "Succeeded", timeout=10,
             what="a reconcile while MLflow is down")
    time.sleep(max(0.0, 60 - (time.monotonic() - down_at)))
    server.start()
    progress = SweepProgress(trials=TrialCounts(total=12, pending=9, running=2, stopped_early=1),
                             best_trial=BestTrial(id="t1", metric=0.9, config={"training.learningRate": 0.001}))
    client.set_tag(parents["s1"], TAG_PROGRESS, progress.model_dump_json(by_alias=True))
    # Caught up after the outage: progress read again, the condition back to True.
    wait_for(lambda: status_of(kube_cluster, "ts", "s1", namespace).get("trials", {}).get("stoppedEarly") == 1,
             timeout=120, what="the progress after MLflow came back")
    status = status_of(kube_cluster, "ts", "s1", namespace)
    assert condition(status, "MlflowReachable")["status"] == "True"
    assert status["progress"] == "1/12" and status["bestTrial"]["config"] == {"training.learningRate": 0.001}
    assert conditions(status_of(kube_cluster, "ts", "s2", namespace))["Running"] == "True"


def _parent_run(mlflow_server: str, experiment: str, uid: str) -> tuple[MlflowClient, str, str]:
    client = MlflowClient(mlflow_server)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    return client, experiment_id, client.create_run(experiment_id, tags={TAG_UID: uid}).info.run_id


def test_a_resource_deleted_mid_run_ends_its_mlflow_runs_killed(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, mlflow_server: str
) -> None:
    assert kube_cluster.apply(gpu_sweep(), namespace).returncode == 0
    body = wait_for(lambda: kube_cluster.get("ts", "gpu-sweep", namespace), what="the sweep")
    kube_cluster.patch_status("rayjob", "ts-gpu-sweep", namespace,
                              {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    client, experiment_id, parent = _parent_run(mlflow_server, "vit-cifar10", body["metadata"]["uid"])
    trial = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent}).info.run_id
    finished = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent}).info.run_id
    client.set_terminated(finished, "FINISHED")
    wait_for(lambda: status_of(kube_cluster, "ts", "gpu-sweep", namespace).get("mlflow", {}).get("runId") == parent,
             what="the parent run in status")
    kube_cluster.kubectl("delete", "ts", "gpu-sweep", "-n", namespace)
    wait_for(lambda: client.get_run(parent).info.status == "KILLED", what="the parent run KILLED")
    assert client.get_run(trial).info.status == "KILLED"
    assert client.get_run(finished).info.status == "FINISHED", "a trial that had ended keeps its state"


def test_a_failed_run_says_why_in_the_trainers_words(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, mlflow_server: str
) -> None:
    doc = yaml.safe_load((REPO / "examples" / "trainingjob.yaml").read_text())
    assert kube_cluster.apply(doc, namespace).returncode == 0
    body = wait_for(lambda: kube_cluster.get("tj", "vit-digits", namespace), what="the job")
    wait_for(lambda: kube_cluster.get("rayjob", "tj-vit-digits", namespace), what="the RayJob")
    kube_cluster.patch_status("rayjob", "tj-vit-digits", namespace,
                              {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    wait_for(lambda: status_of(kube_cluster, "tj", "vit-digits", namespace).get("phase") == "Running")
    experiment = doc["spec"].get("mlflow", {}).get("experiment") or "vit-digits"
    client, _, run = _parent_run(mlflow_server, experiment, body["metadata"]["uid"])
    client.set_tag(run, TAG_ERROR, "Traceback (most recent call last):\n  ...\nFileNotFoundError: /data/pets is empty")
    client.set_terminated(run, "FAILED")
    kube_cluster.patch_status("rayjob", "tj-vit-digits", namespace, {
        "jobDeploymentStatus": "Complete", "jobStatus": "FAILED", "message": "Job failed"})
    wait_for(lambda: "FileNotFoundError" in condition(status_of(kube_cluster, "tj", "vit-digits", namespace),
                                                      "Failed").get("message", ""), what="the root cause")
    status = status_of(kube_cluster, "tj", "vit-digits", namespace)
    assert status["rootCause"] == "FileNotFoundError: /data/pets is empty"
    assert condition(status, "Failed")["message"] == "Job failed: FileNotFoundError: /data/pets is empty"


def test_a_run_whose_pods_were_stopped_says_it_was_interrupted_and_how_it_resumes(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, mlflow_server: str
) -> None:
    # A head pod deleted mid-run: the pod's preStop hook stopped the driver gracefully (its run
    # KILLED and tagged), and the Ray job ended FAILED with the driver's exit code 143.
    doc = yaml.safe_load((REPO / "examples" / "trainingjob.yaml").read_text())
    doc["metadata"]["name"] = "cut"
    assert kube_cluster.apply(doc, namespace).returncode == 0
    body = wait_for(lambda: kube_cluster.get("tj", "cut", namespace), what="the job")
    wait_for(lambda: kube_cluster.get("rayjob", "tj-cut", namespace), what="the RayJob")
    kube_cluster.patch_status("rayjob", "tj-cut", namespace, {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    wait_for(lambda: status_of(kube_cluster, "tj", "cut", namespace).get("phase") == "Running")
    experiment = doc["spec"].get("mlflow", {}).get("experiment") or "cut"
    client, _, run = _parent_run(mlflow_server, experiment, body["metadata"]["uid"])
    client.set_tag(run, TAG_INTERRUPTED, "SIGTERM")
    client.set_terminated(run, "KILLED")
    kube_cluster.patch_status("rayjob", "tj-cut", namespace, {
        "jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed",
        "message": "Job entrypoint command failed with exit code 143"})
    wait_for(lambda: "interrupted by SIGTERM" in condition(status_of(kube_cluster, "tj", "cut", namespace),
                                                           "Failed").get("message", ""), what="the cause")
    message = condition(status_of(kube_cluster, "tj", "cut", namespace), "Failed")["message"]
    assert "spec.cluster.backoffLimit" in message and message.startswith("Job entrypoint command failed"), message
