"""Sweeps in a Kueue queue, with the real Kueue (tests/integration/kueue.py) admitting RayJobs by quota.

Admission needs no kubelet: Kueue admits a RayJob's Workload when the ClusterQueue's quota covers
its pods' requests, and unsuspends the RayJob; that is what these tests watch, with the operator
and the API server real. The node tests run admitted sweeps to the end.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from raylight.operator.builder import FIELD_MANAGER, QUEUE_LABEL
from tests.kube import stop_process

from .conftest import REPO, Cluster, OperatorProcess, wait_for
from .kueue import QUEUE, KueueProcess, admitted, cluster_queue, queue_setup, requested, workload_of
from .test_chart import reconciles
from .test_operator import status_of


@pytest.fixture(scope="module")
def kueue(kube_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KueueProcess]:
    process = KueueProcess(kube_cluster, tmp_path_factory.mktemp("kueue"))
    try:  # a start that fails halfway leaves no webhook pointing at nothing
        process.start()
        yield process
    finally:
        process.stop()


def queued_sweep(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "examples" / "cluster-quickstart.yaml").read_text())
    doc["metadata"] = {"name": name, "labels": {QUEUE_LABEL: QUEUE}}
    return dict(doc)


def rayjob_of(cluster: Cluster, name: str, namespace: str) -> dict[str, Any]:
    body = json.loads(cluster.kubectl("get", "rayjob", f"ts-{name}", "-n", namespace, "-o", "json",
                                      "--show-managed-fields").stdout)
    return dict(body)


def suspend_owners(rayjob: dict[str, Any]) -> list[str]:
    """The managers of spec.suspend, from managedFields."""
    return sorted(entry["manager"] for entry in rayjob["metadata"].get("managedFields", [])
                  if "f:suspend" in (entry.get("fieldsV1", {}).get("f:spec") or {}))


def wait_admitted(cluster: Cluster, name: str, namespace: str) -> None:
    """Until Kueue admits name's Workload; on a timeout, what Kueue says about it."""
    try:
        wait_for(lambda: admitted(workload_of(cluster, name, namespace)), timeout=60, what=f"{name} admitted")
    except AssertionError as exc:
        workload = workload_of(cluster, name, namespace) or {}
        raise AssertionError(f"{exc}: {json.dumps((workload.get('status') or {}).get('conditions'))}; "
                             f"{cluster.kubectl('get', 'clusterqueues', '-o', 'yaml').stdout}") from None


def wait_queued(cluster: Cluster, name: str, namespace: str) -> None:
    wait_for(lambda: workload_of(cluster, name, namespace), timeout=60, what=f"{name}'s Workload")
    wait_for(lambda: waiting_reason(cluster, name, namespace)[1] == "Queued", timeout=30,
             what=f"{name} to say it is queued")


def waiting_reason(cluster: Cluster, name: str, namespace: str) -> tuple[str, str, str]:
    status = status_of(cluster, "ts", name, namespace)
    running: dict[str, str] = next((c for c in status.get("conditions", []) if c["type"] == "Running"), {})
    return status.get("phase", ""), running.get("reason", ""), running.get("message", "")


def test_queued_sweeps_wait_for_admission_and_the_next_runs_when_quota_frees(
        kube_cluster: Cluster, namespace: str, operator: OperatorProcess, kueue: KueueProcess) -> None:
    cluster_queue_name = queue_setup(kube_cluster, namespace)
    for name in ("first", "second"):
        assert kube_cluster.apply(queued_sweep(name), namespace).returncode == 0
    for name in ("first", "second"):
        wait_queued(kube_cluster, name, namespace)
        phase, _, message = waiting_reason(kube_cluster, name, namespace)
        assert phase == "Pending" and message == f"waiting for Kueue admission in LocalQueue {QUEUE}"
        assert rayjob_of(kube_cluster, name, namespace)["spec"].get("suspend") is True
    # Quota for exactly one of them (they are the same size, made in the same second: Kueue may
    # take either first): that one is admitted and unsuspended, the other waits.
    quota = requested(workload_of(kube_cluster, "first", namespace) or {})
    applied = kube_cluster.apply(cluster_queue(cluster_queue_name, quota["cpu"], quota["memory"]), namespace)
    assert applied.returncode == 0, applied.stderr

    def admitted_ones() -> list[str]:
        return [name for name in ("first", "second") if admitted(workload_of(kube_cluster, name, namespace))]

    (running,) = wait_for(admitted_ones, timeout=60, what="one of them admitted")
    (waiting,) = {"first", "second"} - {running}
    wait_for(lambda: rayjob_of(kube_cluster, running, namespace)["spec"].get("suspend", False) is False,
             timeout=30, what=f"{running}'s RayJob unsuspended")
    wait_for(lambda: waiting_reason(kube_cluster, running, namespace)[1] == "ClusterStarting", timeout=30,
             what=f"{running} to stop saying it is queued")
    assert FIELD_MANAGER not in suspend_owners(rayjob_of(kube_cluster, running, namespace)), "Kueue's field now"
    assert admitted_ones() == [running] and waiting_reason(kube_cluster, waiting, namespace)[1] == "Queued"
    assert rayjob_of(kube_cluster, waiting, namespace)["spec"].get("suspend") is True
    # The admitted one goes (as when it ends): its quota is the other's.
    kube_cluster.kubectl("delete", "ts", running, "-n", namespace)
    wait_admitted(kube_cluster, waiting, namespace)
    wait_for(lambda: rayjob_of(kube_cluster, waiting, namespace)["spec"].get("suspend", False) is False,
             timeout=30, what=f"{waiting}'s RayJob unsuspended")


class SuspendWatch:
    """Every value a RayJob's spec.suspend takes, in order (kubectl get -w), with when it was seen:
    a RayJob unsuspended for a moment (Kueue suspends an unadmitted one again) is caught too."""

    def __init__(self, cluster: Cluster, name: str, namespace: str, log: Path) -> None:
        self.log = log
        self.output = log.open("w")
        self.process = subprocess.Popen(
            [str(cluster.bin / "kubectl"), "--kubeconfig", str(cluster.kubeconfig), "get", "rayjob", name,
             "-n", namespace, "-w", "-o", "jsonpath={.spec.suspend}{'\\n'}"],
            stdout=self.output, stderr=subprocess.STDOUT)

    def values(self) -> list[str]:
        return self.log.read_text().splitlines()

    def stop(self) -> None:
        stop_process(self.process, grace_s=5)
        self.output.close()


def test_a_queued_sweep_suspended_and_resumed_never_starts_before_admission(
        kube_cluster: Cluster, namespace: str, operator: OperatorProcess, kueue: KueueProcess,
        tmp_path: Path) -> None:
    cluster_queue_name = queue_setup(kube_cluster, namespace)
    sweep = queued_sweep("held")
    assert kube_cluster.apply(sweep, namespace).returncode == 0
    wait_for(lambda: waiting_reason(kube_cluster, "held", namespace)[1] == "Queued", timeout=60, what="queued")
    watch = SuspendWatch(kube_cluster, "ts-held", namespace, tmp_path / "suspend.log")
    try:
        wait_for(lambda: watch.values(), timeout=30, what="the watch's first value")

        def set_suspend(value: bool) -> None:
            kube_cluster.kubectl("patch", "ts", "held", "-n", namespace, "--type", "merge",
                                 "-p", json.dumps({"spec": {"suspend": value}}))

        set_suspend(True)
        wait_for(lambda: waiting_reason(kube_cluster, "held", namespace)[0] == "Suspended", timeout=30,
                 what="suspended")
        assert FIELD_MANAGER in suspend_owners(rayjob_of(kube_cluster, "held", namespace)), "the user's suspend"
        set_suspend(False)
        wait_for(lambda: waiting_reason(kube_cluster, "held", namespace)[1] == "Queued", timeout=30,
                 what="queued again")
        time.sleep(3)
        # A restarted operator and a re-apply of the same manifest (GitOps) leave it waiting too.
        operator.stop()
        operator.start()
        wait_for(lambda: reconciles(operator) > 0, timeout=30, what="the restarted operator to reconcile")
        assert kube_cluster.apply(sweep, namespace).returncode == 0
        time.sleep(3)
        rayjob = rayjob_of(kube_cluster, "held", namespace)
        assert not admitted(workload_of(kube_cluster, "held", namespace))
        assert set(watch.values()) == {"true"}, f"unsuspended before admission: {watch.values()}"
        assert rayjob["spec"].get("suspend") is True and FIELD_MANAGER in suspend_owners(rayjob)
        # Admitted: Kueue unsuspends it, and owns the field from then on.
        quota = requested(workload_of(kube_cluster, "held", namespace) or {})
        applied = kube_cluster.apply(cluster_queue(cluster_queue_name, quota["cpu"], quota["memory"]), namespace)
        assert applied.returncode == 0, applied.stderr
        wait_for(lambda: rayjob_of(kube_cluster, "held", namespace)["spec"].get("suspend", False) is False,
                 timeout=60, what="held's RayJob unsuspended on admission")
        assert admitted(workload_of(kube_cluster, "held", namespace))
        time.sleep(3)  # the operator's next apply leaves the field to Kueue
        assert rayjob_of(kube_cluster, "held", namespace)["spec"].get("suspend", False) is False
        assert FIELD_MANAGER not in suspend_owners(rayjob_of(kube_cluster, "held", namespace))
    finally:
        watch.stop()


def test_a_rayjob_kueues_webhook_refuses_shows_in_the_status(
        kube_cluster: Cluster, namespace: str, operator: OperatorProcess, kueue: KueueProcess) -> None:
    """A label value Kubernetes takes but Kueue's webhook refuses (a queue name must be a DNS
    subdomain): the resource says so within a minute, in Kueue's words."""
    sweep = queued_sweep("bad-queue")
    sweep["metadata"]["labels"][QUEUE_LABEL] = "Team_Queue"
    assert kube_cluster.apply(sweep, namespace).returncode == 0
    wait_for(lambda: waiting_reason(kube_cluster, "bad-queue", namespace)[1] == "RayJobRefused", timeout=60,
             what="the refusal in the status")
    phase, _, message = waiting_reason(kube_cluster, "bad-queue", namespace)
    assert phase == "Pending" and "Team_Queue" in message and "kueue" in message.lower(), message
    assert kube_cluster.get("rayjob", "ts-bad-queue", namespace) is None, "nothing half-created"
