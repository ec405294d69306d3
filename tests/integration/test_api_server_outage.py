"""The API server goes away while two operator replicas run and sweeps are Running.

The replicas talk to an API server of this test's own: a second kube-apiserver on the test
cluster's etcd, started with the first one's flags, its own users (one per replica) and an audit
log of every write. Stopping it (SIGSTOP for 30 s, then SIGCONT; then SIGKILL and a restart) pauses
nothing the other tests use. The audit log is the judge of who wrote when:

- A term is a run of one replica's writes. Each term opens with a write to the election's Lease
  (the replica took it), so the old leader's last write precedes the new leader's first.
- From outside, through its metrics (which do not need the API server), the leader stops leading
  within its renew deadline, before the Lease it held can expire.
- Afterwards: one RayJob per sweep, a status change made during the outage is caught up, and a
  sweep made after it is reconciled (no worker thread is stuck on a dead connection).
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import Cluster, OperatorProcess, wait_for
from .private_api_server import PrivateApiServer
from .test_operator import gpu_sweep, status_of

# The operator's election defaults (client-go's): what a cluster runs, and what the test shows.
LEASE_S, RENEW_S, RETRY_S = 15.0, 10.0, 2.0
LEASE = "raylight-outage"
REPLICAS = ("replica-a", "replica-b")
WRITES = {"create", "update", "patch", "delete", "deletecollection"}
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived", "ResponseStarted"],
    "rules": [{"level": "Metadata", "verbs": sorted(WRITES)}, {"level": "None"}],
}


class OutageApiServer(PrivateApiServer):
    """The outage's API server: a user per replica, an audit log of every write."""

    def __init__(self, cluster: Cluster, directory: Path) -> None:
        policy = directory / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        self.audit_log = directory / "audit.log"
        super().__init__(cluster, directory, REPLICAS,
                         {"--audit-policy-file": str(policy), "--audit-log-path": str(self.audit_log)})

    def writes(self) -> list[dict[str, Any]]:
        """The replicas' writes that the server carried out, in the order it finished them."""
        events = [json.loads(line) for line in self.audit_log.read_text().splitlines() if line.strip()]
        done = [e for e in events if e.get("stage") == "ResponseComplete" and e.get("verb") in WRITES
                and e["user"]["username"] in REPLICAS and 200 <= e.get("responseStatus", {}).get("code", 0) < 300]
        return sorted(done, key=lambda e: e["stageTimestamp"])


@pytest.fixture
def api_server(kube_cluster: Cluster, tmp_path: Path) -> Iterator[OutageApiServer]:
    server = OutageApiServer(kube_cluster, tmp_path)
    server.start()
    yield server
    server.stop()


class LeaderWatch:
    """Each replica's `raylight_leader` gauge, every 200 ms (a replica's metrics need no API server)."""

    def __init__(self, replicas: dict[str, OperatorProcess]) -> None:
        self.replicas = replicas
        self.samples: list[tuple[float, dict[str, bool]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.samples.append((time.monotonic(), {name: _leads(p) for name, p in self.replicas.items()}))

    @contextmanager
    def running(self) -> Iterator[LeaderWatch]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()

    def leader(self) -> str | None:
        leading = [name for name, leads in (self.samples[-1][1] if self.samples else {}).items() if leads]
        return leading[0] if len(leading) == 1 else None

    def stopped_leading(self, name: str, since: float) -> float:
        """Seconds from `since` to the first sample where `name` no longer leads."""
        wait_for(lambda: any(at >= since and not leads[name] for at, leads in self.samples), timeout=LEASE_S + 10,
                 interval=0.2, what=f"{name} to stop leading")
        return next(at for at, leads in self.samples if at >= since and not leads[name]) - since

    def two_leaders(self) -> list[float]:
        return [at for at, leads in self.samples if sum(leads.values()) > 1]


def _leads(replica: OperatorProcess) -> bool:
    try:
        found = re.search(r"^raylight_leader (\S+)$", replica.metrics(), re.MULTILINE)
    except OSError:
        return False
    return bool(found and float(found.group(1)) == 1.0)


def terms(writes: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Runs of one replica's writes, in order, each with its writes."""
    runs: list[tuple[str, list[dict[str, Any]]]] = []
    for write in writes:
        user = write["user"]["username"]
        if not runs or runs[-1][0] != user:
            runs.append((user, []))
        runs[-1][1].append(write)
    return runs


def is_lease_write(write: dict[str, Any], namespace: str) -> bool:
    ref = write.get("objectRef", {})
    return bool(ref.get("resource") == "leases" and ref.get("namespace") == namespace and ref.get("name") == LEASE)


def running_sweep(cluster: Cluster, namespace: str, name: str) -> None:
    assert cluster.apply(gpu_sweep(name), namespace).returncode == 0
    wait_for(lambda: cluster.get("rayjob", f"ts-{name}", namespace), timeout=60, what=f"{name}'s RayJob")
    cluster.patch_status("rayjob", f"ts-{name}", namespace, {
        "jobDeploymentStatus": "Running", "jobStatus": "RUNNING", "startTime": "2026-12-07T10:00:00Z"})
    wait_for(lambda: status_of(cluster, "ts", name, namespace).get("phase") == "Running", timeout=60,
             what=f"{name} Running")


def test_the_api_server_stopped_then_killed_never_gives_two_leaders(
        kube_cluster: Cluster, namespace: str, mlflow_server: str, api_server: OutageApiServer,
        tmp_path: Path) -> None:
    replicas = {
        user: OperatorProcess(kube_cluster, mlflow_server, tmp_path / f"{user}.log",
                              kubeconfig=api_server.kubeconfig(user),
                              extra_args=("--namespace", namespace, "--leader-election-id", LEASE,
                                          "--leader-election-namespace", namespace))
        for user in REPLICAS
    }
    try:
        for replica in replicas.values():
            replica.start()
        with LeaderWatch(replicas).running() as watch:
            first = wait_for(watch.leader, timeout=LEASE_S + 10, what="a leader")
            for name in ("outage-a", "outage-b"):
                running_sweep(kube_cluster, namespace, name)

            # SIGSTOP: every call hangs. The leader stands down by its renew deadline, before its
            # Lease could expire; meanwhile KubeRay (here: the test) finishes one sweep's job.
            stopped = time.monotonic()
            api_server.signal(signal.SIGSTOP)
            kube_cluster.patch_status("rayjob", "ts-outage-a", namespace, {
                "jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "endTime": "2026-12-07T11:00:00Z"})
            took = watch.stopped_leading(first, stopped)
            assert took <= RENEW_S + RETRY_S + 1 < LEASE_S, f"the leader led {took:.1f} s into the outage"
            time.sleep(max(0.0, stopped + 30 - time.monotonic()))
            api_server.signal(signal.SIGCONT)
            wait_for(watch.leader, timeout=LEASE_S * 2 + 10, what=f"a leader after SIGCONT ({_logs(replicas)})")
            wait_for(lambda: status_of(kube_cluster, "ts", "outage-a", namespace).get("phase") == "Succeeded",
                     timeout=60, what="the status change made during the outage")

            # SIGKILL and a restart on the same port: connections are refused, then a new server.
            second = watch.leader()
            assert second is not None
            killed = time.monotonic()
            api_server.kill()
            took = watch.stopped_leading(second, killed)
            assert took <= RENEW_S + RETRY_S + 1, f"the leader led {took:.1f} s into the outage"
            api_server.start()
            wait_for(watch.leader, timeout=LEASE_S * 2 + 10, what=f"a leader after the restart ({_logs(replicas)})")
            assert kube_cluster.apply(gpu_sweep("outage-c"), namespace).returncode == 0
            wait_for(lambda: status_of(kube_cluster, "ts", "outage-c", namespace).get("phase") == "Pending",
                     timeout=60, what=f"a sweep made after the outages reconciled ({_logs(replicas)})")
        assert not watch.two_leaders(), f"two replicas led at once at {watch.two_leaders()[:5]}"
    finally:
        for replica in replicas.values():
            replica.stop()

    assert status_of(kube_cluster, "ts", "outage-b", namespace).get("phase") == "Running"
    rayjobs = kube_cluster.list("rayjobs", namespace)
    assert sorted(r["metadata"]["name"] for r in rayjobs) == ["ts-outage-a", "ts-outage-b", "ts-outage-c"]

    runs = terms(api_server.writes())
    assert len(runs) >= 1 and {user for user, _ in runs} <= set(REPLICAS)
    for user, writes in runs:
        opening = writes[0]
        assert is_lease_write(opening, namespace), (
            f"{user} wrote {opening['verb']} {opening['objectRef']} at {opening['stageTimestamp']} "
            f"before taking the Lease: the other replica's term had not ended")


def _logs(replicas: dict[str, OperatorProcess]) -> str:
    return " | ".join(f"{name}: {replica.log()[-800:]}" for name, replica in replicas.items())
