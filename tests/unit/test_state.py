"""What a RayJob's status means for its owner: phases, conditions, transitions."""

from __future__ import annotations

from typing import Any

import pytest

from raylight.operator.state import (
    Observation,
    Observed,
    compute_status,
    creating_since,
    diagnose_pods,
    observe_rayjob,
    refused_pods_source,
    status_patch,
    transition,
)


def rayjob(deployment: str = "", job: str = "", suspend: bool = False, **status: str) -> dict:
    return {"spec": {"suspend": suspend},
            "status": {"jobDeploymentStatus": deployment, "jobStatus": job, **status}}


@pytest.mark.parametrize(("deployment", "job", "suspend", "phase"), [
    ("", "", False, "Pending"),
    ("Initializing", "", False, "Pending"),
    ("Running", "PENDING", False, "Pending"),
    ("Running", "RUNNING", False, "Running"),
    ("Complete", "SUCCEEDED", False, "Succeeded"),
    ("Complete", "FAILED", False, "Failed"),
    ("Complete", "STOPPED", False, "Failed"),
    ("Failed", "", False, "Failed"),
    ("ValidationFailed", "", False, "Failed"),
    ("Running", "RUNNING", True, "Suspended"),
    ("Suspended", "", True, "Suspended"),
    ("Suspended", "", False, "Suspended"),
    ("Retrying", "", False, "Pending"),
])
def test_phase(deployment: str, job: str, suspend: bool, phase: str) -> None:
    assert observe_rayjob(rayjob(deployment, job, suspend)).phase == phase


def test_failure_keeps_kuberays_reason_and_message() -> None:
    observed = observe_rayjob(rayjob("Failed", reason="DeadlineExceeded", message="past activeDeadlineSeconds"))
    assert (observed.reason, observed.message) == ("DeadlineExceeded", "past activeDeadlineSeconds")


def seen(rayjob_: dict | None, **fields: Any) -> Observation:
    return Observation(**{"generation": 1, "rayjob_name": "ts-a", "run_hash": "h1", "rayjob": rayjob_,
                          "pods": [], **fields})


def test_conditions_move_only_when_their_status_flips() -> None:
    start = compute_status({}, seen(rayjob("Running", "RUNNING", startTime="2026-01-01T00:00:00Z")), "T1")
    assert start["phase"] == "Running" and start["startTime"] == "2026-01-01T00:00:00Z"
    assert start["observedGeneration"] == 1 and start["runHash"] == "h1" and start["rayJobName"] == "ts-a"
    running = {c["type"]: c for c in start["conditions"]}
    assert running["Running"]["status"] == "True" and running["Succeeded"]["status"] == "False"
    assert running["SpecValid"]["status"] == "True"
    assert status_patch(start, compute_status(start, seen(rayjob("Running", "RUNNING")), "T2")) == {}, \
        "nothing changed: no write"
    done = compute_status(start, seen(rayjob("Complete", "SUCCEEDED", endTime="2026-01-01T01:00:00Z")), "T3")
    conditions = {c["type"]: c for c in done["conditions"]}
    assert conditions["Succeeded"] == {**conditions["Succeeded"], "status": "True", "lastTransitionTime": "T3"}
    assert conditions["Failed"]["lastTransitionTime"] == "T1", "Failed stayed False: its time stays"
    assert done["completionTime"] == "2026-01-01T01:00:00Z"
    assert transition("Running", done) == ("Normal", "Succeeded",
                                           "Running -> Succeeded: the run finished; results are in MLflow")


def test_failure_is_a_warning_event() -> None:
    update = compute_status({"phase": "Running"}, seen(rayjob("Failed", reason="AppFailed", message="boom")), "T")
    assert transition("Running", update) == ("Warning", "Failed", "Running -> Failed: boom")


def test_a_new_run_forgets_the_last_runs_results_and_a_patch_clears_them() -> None:
    finished = compute_status({}, seen(rayjob("Complete", "SUCCEEDED"), progress={
        "progress": "12/12", "mlflow": {"runId": "r1"}}), "T1")
    assert finished["progress"] == "12/12"
    rerun = compute_status(finished, seen(None, run_hash="h2"), "T2")
    assert rerun["phase"] == "Pending" and rerun["runHash"] == "h2"
    patch = status_patch(finished, rerun)
    assert patch["progress"] is None and patch["mlflow"] is None and patch["completionTime"] is None


def test_a_spec_change_during_a_run_is_not_observed_yet() -> None:
    current = compute_status({}, seen(rayjob("Running", "RUNNING")), "T1")
    waiting = compute_status(current, seen(rayjob("Running", "RUNNING"), generation=2, spec_observed=False), "T2")
    assert waiting["observedGeneration"] == 1 and waiting["phase"] == "Running"


def waiting_pod(name: str, reason: str, message: str = "", **container: Any) -> dict:
    return {"metadata": {"name": name}, "spec": {"containers": [{"name": "ray-worker", "image": "trainer:v1"}]},
            "status": {"phase": "Pending", "containerStatuses": [
                {"name": "ray-worker", "state": {"waiting": {"reason": reason, "message": message}}, **container}]}}


def test_an_image_that_cannot_be_pulled_is_the_pending_reason() -> None:
    pods = [waiting_pod("w-2", "ImagePullBackOff", 'Back-off pulling image "trainer:v1"'),
            waiting_pod("w-1", "ErrImagePull", "not found")]
    status = compute_status({}, seen(rayjob("Initializing"), pods=pods), "T")
    pending = next(c for c in status["conditions"] if c["type"] == "Running")
    assert status["phase"] == "Pending" and pending["reason"] == "ImagePullBackOff"
    assert pending["message"] == "pod w-1 cannot pull image trainer:v1 (ErrImagePull): not found"
    healthy = next(c for c in status["conditions"] if c["type"] == "PodsHealthy")
    assert healthy["status"] == "False" and healthy["reason"] == "ImagePullBackOff"


def test_unschedulable_and_crash_looping_pods_say_why() -> None:
    unschedulable = {"metadata": {"name": "head"}, "status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."}]}}
    assert diagnose_pods([unschedulable]) == Observed(
        "Pending", "Unschedulable",
        "pod head cannot be scheduled: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")
    crashing = waiting_pod("w", "CrashLoopBackOff", "back-off 20s", restartCount=3, lastState={"terminated": {
        "exitCode": 1, "reason": "Error", "message": "Traceback ...\nValueError: bad data\n\n"}})
    found = diagnose_pods([crashing])
    assert found is not None and found.reason == "CrashLoopBackOff"
    assert found.message == ("pod w, container ray-worker keeps crashing (exit code 1, 3 restarts); "
                             "last log line: ValueError: bad data")
    running = compute_status({}, seen(rayjob("Running", "RUNNING"), pods=[crashing]), "T")
    assert running["phase"] == "Running", "a crashing worker does not hide that the job runs"
    assert next(c for c in running["conditions"] if c["type"] == "PodsHealthy")["reason"] == "CrashLoopBackOff"
    secret = waiting_pod("h", "CreateContainerConfigError", 'secret "mlflow-credentials" not found')
    assert diagnose_pods([secret]) == Observed(
        "Pending", "CreateContainerConfigError", 'pod h, container ray-worker: secret "mlflow-credentials" not found')
    assert diagnose_pods([waiting_pod("ok", "ContainerCreating")]) is None


def test_mlflow_down_is_a_condition_and_keeps_the_last_progress() -> None:
    current = compute_status({}, seen(rayjob("Running", "RUNNING"), progress={"progress": "3/12"}), "T1")
    down = compute_status(current, seen(rayjob("Running", "RUNNING"), tracking_error="MLflow cannot be reached"), "T2")
    assert down["progress"] == "3/12"
    reachable = next(c for c in down["conditions"] if c["type"] == "MlflowReachable")
    assert reachable["status"] == "False" and reachable["message"] == "MLflow cannot be reached"


def test_a_finished_run_whose_rayjob_was_deleted_keeps_its_record() -> None:
    done = compute_status({}, seen(rayjob("Complete", "SUCCEEDED")), "T1")
    after = compute_status(done, seen(None), "T2")
    assert status_patch(done, after) == {}, "nothing about the ended run changes"


def test_a_failed_run_says_the_root_cause_the_trainer_recorded() -> None:
    failed = compute_status({"phase": "Running"}, seen(rayjob("Complete", "FAILED", message="Job failed"), progress={
        "rootCause": "FileNotFoundError: /data/pets does not exist"}), "T")
    condition = next(c for c in failed["conditions"] if c["type"] == "Failed")
    assert condition["message"] == "Job failed: FileNotFoundError: /data/pets does not exist"


def test_a_run_that_failed_before_its_mlflow_run_says_the_drivers_error_without_the_log_tail() -> None:
    """The driver explains a bad storage path or dataset before it opens any MLflow run: the root
    cause is its error line, from the log tail Ray appends to a failed job's message."""
    logs = ("Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000 chars):\n"
            "TrainingJob refused: starting on the Ray cluster at 10.0.0.5:6379\n"
            "error /etc/raylight/manifest.yaml: spec.cluster.storagePath: cannot keep the run's state at "
            "s3://b/r: access denied (credentials from the Secret 'keys' (spec.cluster.storageSecret))\n")
    failed = compute_status({"phase": "Running"}, seen(rayjob("Complete", "FAILED", message=logs)), "T")
    assert failed["rootCause"].startswith("/etc/raylight/manifest.yaml: spec.cluster.storagePath: ")
    assert failed["rootCause"].endswith("the Secret 'keys' (spec.cluster.storageSecret))")
    condition = next(c for c in failed["conditions"] if c["type"] == "Failed")
    assert condition["message"] == f"Job entrypoint command failed with exit code 1: {failed['rootCause']}"
    plain = compute_status({"phase": "Running"}, seen(rayjob("Complete", "FAILED", message="Job failed")), "T")
    assert "rootCause" not in plain, "no log tail, no guess"


def test_a_pod_stuck_being_created_says_the_kubelets_warning() -> None:
    scheduled = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-26T10:00:00Z"}]
    stuck = waiting_pod("head", "ContainerCreating")
    stuck["status"]["conditions"] = scheduled
    assert creating_since(stuck) is not None and creating_since(stuck).minute == 0  # type: ignore[union-attr]
    assert creating_since(waiting_pod("w", "ContainerCreating")) is None, "not scheduled yet: the scheduler's to say"
    pulling = waiting_pod("w", "ImagePullBackOff")
    pulling["status"]["conditions"] = scheduled
    assert creating_since(pulling) is None, "its own reason says it already"
    assert diagnose_pods([stuck]) is None, "no Warning read: nothing to say yet"
    stuck["status"]["warning"] = {"reason": "FailedMount",
                                  "message": 'MountVolume.SetUp failed for volume "creds" : secret "creds" not found'}
    status = compute_status({}, seen(rayjob("Initializing"), pods=[stuck]), "T")
    pending = next(c for c in status["conditions"] if c["type"] == "Running")
    assert status["phase"] == "Pending" and pending["reason"] == "FailedMount"
    assert pending["message"] == ('pod head cannot start: MountVolume.SetUp failed for volume "creds" : '
                                  'secret "creds" not found')


def role_pod(role: str, deleting: bool = False) -> dict:
    meta: dict[str, Any] = {"name": f"p-{role}", "labels": {"raylight.dev/role": role}}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-07T00:00:00Z"
    return {"metadata": meta, "status": {"phase": "Running"}}


def test_a_missing_pod_points_at_the_object_whose_events_say_why() -> None:
    starting = {**rayjob("Initializing", rayClusterName="ts-a-x1"), "metadata": {"name": "ts-a"}}
    assert refused_pods_source(starting, []) == ("RayCluster", "ts-a-x1")
    assert refused_pods_source(starting, [role_pod("head")]) == ("RayCluster", "ts-a-x1"), "no worker yet"
    assert refused_pods_source(starting, [role_pod("head"), role_pod("worker", deleting=True)]) is not None
    assert refused_pods_source(starting, [role_pod("head"), role_pod("worker")]) is None
    assert refused_pods_source({**rayjob("Initializing"), "metadata": {"name": "ts-a"}}, []) is None, \
        "KubeRay has not made the cluster yet: nothing to refuse"
    submitting = {**rayjob("Running", "PENDING"), "metadata": {"name": "ts-a"}}
    assert refused_pods_source(submitting, [role_pod("head"), role_pod("worker")]) == ("Job", "ts-a")
    assert refused_pods_source(submitting, [role_pod("head"), role_pod("worker"), role_pod("submitter")]) is None
    running = {**rayjob("Running", "RUNNING"), "metadata": {"name": "ts-a"}}
    assert refused_pods_source(running, []) is None, "the job runs: a lost pod is the head-lost path's"
    suspended = {**rayjob("Initializing", suspend=True, rayClusterName="c"), "metadata": {"name": "ts-a"}}
    assert refused_pods_source(suspended, []) is None


def test_a_refused_pod_is_the_pending_reason_and_unhealthy_pods() -> None:
    refusal = Observed("Pending", "PodsRefused", 'RayCluster c: Failed to create head Pod ns/c-head, pods "c-head" '
                                                 'is forbidden: violates PodSecurity "restricted:latest"')
    status = compute_status({}, seen(rayjob("Initializing", rayClusterName="c"), refusal=refusal), "T")
    conditions = {c["type"]: c for c in status["conditions"]}
    assert status["phase"] == "Pending" and conditions["Running"]["reason"] == "PodsRefused"
    healthy = conditions["PodsHealthy"]
    assert healthy["status"] == "False" and "violates PodSecurity" in healthy["message"]
    fixed = compute_status(status, seen(rayjob("Initializing", rayClusterName="c"),
                                        pods=[role_pod("head"), role_pod("worker")]), "T2")
    after = {c["type"]: c for c in fixed["conditions"]}
    assert after["Running"]["reason"] == "ClusterStarting" and after["PodsHealthy"]["status"] == "True"


def test_a_queued_run_waits_for_kueue_and_says_which_queue() -> None:
    queued = seen(rayjob("Suspended", suspend=True), queue="team-queue")
    status = compute_status({}, queued, "T")
    running = next(c for c in status["conditions"] if c["type"] == "Running")
    assert status["phase"] == "Pending" and running["reason"] == "Queued"
    assert running["message"] == "waiting for Kueue admission in LocalQueue team-queue"
    taken_back = compute_status(status, seen(rayjob("Suspending", suspend=True), queue="team-queue"), "T2")
    assert next(c for c in taken_back["conditions"] if c["type"] == "Running")["reason"] == "Preempted"
    # The user's own suspend (the reconciler passes no queue then) is a suspend, queue or not.
    assert compute_status({}, seen(rayjob("Suspended", suspend=True)), "T")["phase"] == "Suspended"
