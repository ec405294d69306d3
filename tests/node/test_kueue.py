"""Kueue on the test node (the real Kueue, tests/integration/kueue.py): a sweep that a
higher-priority one preempts stops as a suspend does and resumes when Kueue admits it again."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from raylight.operator.builder import QUEUE_LABEL
from tests.integration.kueue import QUEUE, KueueProcess, admitted, cluster_queue, queue_setup, requested, workload_of

from .conftest import Node, Release, TrialRuns, mlflow_client, pods_of, wait_for
from .test_suspend import EPOCHS, TRIALS, small_sweep

PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"


def queued(name: str, priority: str) -> dict[str, Any]:
    doc = small_sweep(name)
    doc["metadata"]["labels"] = {QUEUE_LABEL: QUEUE, PRIORITY_LABEL: priority}
    return doc


def test_a_preempted_sweep_stops_like_a_suspend_and_resumes_when_readmitted(
    node: Node, raylight: Release, namespace: str, tmp_path: Path
) -> None:
    cluster = node.cluster
    kueue = KueueProcess(cluster, tmp_path)
    try:
        kueue.start()
        node.results_volume(namespace)
        priorities = {"low": f"{namespace}-low", "high": f"{namespace}-high"}
        for level, value in (("low", 10), ("high", 1000)):
            cluster.apply({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "WorkloadPriorityClass",
                           "metadata": {"name": priorities[level]}, "value": value}, namespace)
        queue = queue_setup(cluster, namespace, preemption={"withinClusterQueue": "LowerPriority"})
        cluster.apply(queued("low", priorities["low"]), namespace)
        # Quota for the low sweep's Ray cluster and no more: the high one takes it by preemption.
        workload = wait_for(lambda: workload_of(cluster, "low", namespace), timeout=60, what="low's Workload")
        quota = requested(workload)
        cluster.apply(cluster_queue(queue, quota["cpu"], quota["memory"],
                                    {"withinClusterQueue": "LowerPriority"}), namespace)
        client = mlflow_client(raylight)

        def status(name: str) -> dict[str, Any]:
            return dict(((cluster.get("tunesweep", name, namespace) or {}).get("status")) or {})

        trials = TrialRuns(client, "suspend-low")
        children, epochs = trials.children, trials.epochs

        wait_for(lambda: any(1 <= len(epochs(run)) <= EPOCHS // 2 for run in children()), timeout=1200,
                 interval=2, what="a trial of the low sweep past its first epoch")
        high = queued("high", priorities["high"])
        high["spec"].update(numSamples=1, maxConcurrentTrials=1)
        high["spec"]["trial"]["training"]["maxEpochs"] = 2
        cluster.apply(high, namespace)

        # Preempted: Kueue suspends the low sweep's RayJob, its pods go, its runs are cut as by a suspend.
        wait_for(lambda: not admitted(workload_of(cluster, "low", namespace)), timeout=120, what="low evicted")
        reasons = set()

        def low_stopped() -> bool:
            reasons.add(next((c["reason"] for c in status("low").get("conditions", []) if c["type"] == "Running"), ""))
            return not pods_of(cluster, namespace, "raylight.dev/name=low,raylight.dev/role in (head,worker)")

        wait_for(low_stopped, timeout=300, interval=2, what="the low sweep's Ray pods to be gone")
        assert reasons & {"Preempted", "Queued"}, reasons
        parent_id = status("low")["mlflow"]["runId"]
        assert client.get_run(parent_id).info.status == "KILLED"
        cut = [r for r in children() if r.info.status == "KILLED"]
        assert cut and any(epochs(r) for r in cut), [(r.info.run_id, r.info.status) for r in children()]

        # The high sweep runs to the end; then Kueue admits the low one again and it resumes.
        for name in ("high", "low"):
            waited = cluster.kubectl("wait", "-n", namespace, "--for=condition=Succeeded", "--timeout=1200s",
                                     f"tunesweep/{name}", check=False)
            assert waited.returncode == 0, f"{waited.stderr}\nstatus of {name}: {status(name)}"
        runs = children()
        assert status("low")["mlflow"]["runId"] == parent_id and client.get_run(parent_id).info.status == "FINISHED"
        assert len(runs) == TRIALS and {r.info.run_id for r in cut} <= {r.info.run_id for r in runs}
        for run in runs:
            assert run.info.status == "FINISHED"
            assert epochs(run) == sorted(set(epochs(run))) and len(epochs(run)) == EPOCHS, (run.info.run_id,
                                                                                             epochs(run))
        with tempfile.TemporaryDirectory() as scratch:
            driver_log = Path(client.download_artifacts(parent_id, "logs/driver.log", scratch)).read_text()
        assert "interrupted by SIGTERM" in driver_log and "----- resumed -----" in driver_log, driver_log[-3000:]
    finally:
        kueue.stop()
        for name in (f"{namespace}-low", f"{namespace}-high"):
            cluster.kubectl("delete", "workloadpriorityclass", name, "--ignore-not-found", check=False)
        cluster.kubectl("delete", "clusterqueue", f"cq-{namespace}", "--ignore-not-found", "--wait=false",
                        check=False)
