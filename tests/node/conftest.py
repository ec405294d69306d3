"""A cluster whose pods run (tests/cluster/up --node), with Raylight installed by its Helm chart.

Marked `node`: `tests/run -m node` runs these alone. The node's images are built from the
project's Dockerfiles by tests/cluster/images; the chart's MLflow runs the trainer image (it
holds the same pinned mlflow)."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.budget import record_stage
from tests.kube import Cluster, cluster_from, wait_for
from tests.node.bring_up import take as take_bring_up

REPO = Path(__file__).resolve().parents[2]
RELEASE, RELEASE_NAMESPACE = "raylight", "raylight-system"
# The operator's pods of the release (not its bundled MLflow's).
OPERATOR_PODS = "app.kubernetes.io/name=raylight,app.kubernetes.io/component=operator"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.node)
            # The first one also builds the node's images (minutes on a cold machine), then pods train.
            item.add_marker(pytest.mark.timeout(3600))


@dataclass
class Node:
    cluster: Cluster
    env: dict[str, str]

    def host_volume(self, name: str, access_mode: str, size: str = "10Gi") -> Path:
        """A PersistentVolume on a host folder (the node's stand-in for NFS: every pod of this one
        node shares it), writable by any user, for a PVC with no storage class to bind."""
        path = self.cluster.directory / "volumes" / name
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)
        self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
            "spec": {"capacity": {"storage": size}, "accessModes": [access_mode], "storageClassName": "",
                     "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(path)}},
        }))
        return path

    def results_volume(self, namespace: str) -> Path:
        """The examples' shared results PVC (examples/storage/results-pvc.yaml) in namespace."""
        path = self.host_volume(f"results-{namespace}", "ReadWriteMany", "20Gi")
        pvc = yaml.safe_load((REPO / "examples" / "storage" / "results-pvc.yaml").read_text())
        pvc["spec"]["volumeName"] = f"results-{namespace}"  # this PV, not another namespace's
        pvc["spec"]["storageClassName"] = ""
        self.cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(pvc))
        return path


def results_cluster(head_memory: str) -> dict[str, Any]:
    """spec.cluster of a run on the test node: small pods, checkpoints on the results PVC
    (Node.results_volume). The head holds the driver and a detached actor per running trial."""
    return {
        "head": {"cpu": "500m", "memory": head_memory}, "workers": {"memory": "3Gi"},
        "volumes": [{"name": "results", "persistentVolumeClaim": {"claimName": "raylight-results"}}],
        "volumeMounts": [{"name": "results", "mountPath": "/results"}],
        "storagePath": "/results",
    }


@pytest.fixture(scope="package")
def node() -> Iterator[Node]:
    """The node tests/node/bring_up.py started while the tests before these ran, once it is up; taken
    down after the last test here (the e2e tests after them run a local Ray)."""
    if os.geteuid() != 0:
        pytest.skip("the test node needs root: its containerd, bridge, iptables rules and cgroups")
    bring_up = take_bring_up()
    try:
        needed = time.monotonic()
        code, log = bring_up.wait(timeout=3600)
        waited = time.monotonic() - needed
        record_stage("node: up", waited)
        (REPO / "build").mkdir(exist_ok=True)
        (REPO / "build" / "node-up.log").write_text(  # what took its time: kept after the run
            f"{log}tests/cluster/up --node had run {needed - bring_up.started:.0f} s when the node's tests "
            f"needed it; they waited {waited:.0f} s more\n")
        # Why it failed, in the error's own line: a CI log may keep nothing else of a fixture's output.
        assert code == 0, f"tests/cluster/up --node failed ({code}): {log[-3000:]}"
        cluster, env = cluster_from(bring_up.directory)
        yield Node(cluster, env)
    finally:
        bring_up.take_down()


@dataclass
class Release:
    namespace: str
    mlflow_uri: str  # the bundled MLflow's Service, by its ClusterIP (kube-proxy routes it from the host)
    mlflow_service_host: str  # the Host header pods send: the Service's DNS name and port


@pytest.fixture(scope="package")
def raylight(node: Node) -> Iterator[Release]:
    """`helm install` of charts/raylight: the operator and the bundled MLflow, as pods."""
    cluster, env = node.cluster, node.env
    node.host_volume("raylight-mlflow", "ReadWriteOnce")
    operator_image, tag = env["RAYLIGHT_OPERATOR_IMAGE"].rsplit(":", 1)
    cluster.helm("install", RELEASE, str(REPO / "charts" / "raylight"), "-n", RELEASE_NAMESPACE,
                 "--create-namespace", "--wait", "--timeout", "5m",
                 "--set", f"image.repository={operator_image}", "--set", f"image.tag={tag}",
                 "--set", f"trainerImage={env['RAYLIGHT_TRAINER_IMAGE']}",
                 "--set", f"mlflow.server.image={env['RAYLIGHT_TRAINER_IMAGE']}",
                 "--set", "progressIntervalSeconds=5")
    address, port = cluster.service_address("raylight-mlflow", RELEASE_NAMESPACE)
    yield Release(RELEASE_NAMESPACE, f"http://{address}:{port}",
                  f"raylight-mlflow.{RELEASE_NAMESPACE}.svc:{port}")
    cluster.helm("uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait", check=False)


@pytest.fixture
def namespace(node: Node, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace for one test; after it, its pods are waited for until gone: they hold the node's
    CPU while they stop (up to their grace period), and the next test's pods must be scheduled
    on what the node has, or its scheduling messages name the wrong shortage."""
    with node.cluster.scratch_namespace() as name:
        yield name
        write_timeline(node.cluster, name, request.node.name)
    wait_for(lambda: not node.cluster.list("pods", name), timeout=300, interval=2,
             what=f"the pods of namespace {name} to be gone")


def write_timeline(cluster: Cluster, namespace: str, test: str) -> None:
    """build/node-timelines/TEST.txt: when each pod of the test was made, scheduled, started, ready
    and ended, in seconds from the first object of the namespace (what a node test's time goes to)."""
    try:
        rows = timeline_rows(cluster, namespace)
    except Exception as error:  # a timeline is for reading afterwards; the test's result stands
        rows = [f"no timeline: {error!r}"]
    folder = REPO / "build" / "node-timelines"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{test}.txt").write_text("\n".join(rows) + "\n")


def timeline_rows(cluster: Cluster, namespace: str) -> list[str]:
    """A row per object: the run's resource and every pod it had, deleted ones too (from the
    namespace's Events, which outlive their pods): made, scheduled, container started, ready
    (pods still there) and ended."""
    from datetime import datetime

    def at(stamp: str | None) -> float | None:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else None

    marks: dict[str, dict[str, float]] = {}

    def mark(name: str, what: str, stamp: str | None, first: bool = True) -> None:
        when = at(stamp)
        if when is not None:
            seen = marks.setdefault(name, {}).get(what)
            if seen is None or (when < seen if first else when > seen):
                marks[name][what] = when

    for item in [*cluster.list("tunesweeps,trainingjobs", namespace), *cluster.list("pods", namespace)]:
        name = f"{item['kind']}/{item['metadata']['name']}"
        mark(name, "made", item["metadata"]["creationTimestamp"])
        for condition in (item.get("status") or {}).get("conditions") or []:
            kind = {"PodScheduled": "sched", "Ready": "ready", "Succeeded": "ended", "Failed": "ended"}
            if condition["type"] in kind and condition.get("status") == "True":
                mark(name, kind[condition["type"]], condition.get("lastTransitionTime"))
    reasons = {"Scheduled": "sched", "Started": "start", "Killing": "ended", "Completed": "ended"}
    for event in cluster.list("events", namespace):
        involved = event.get("involvedObject") or {}
        what = reasons.get(event.get("reason", ""))
        if involved.get("kind") == "Pod" and what:
            stamp = event.get("eventTime") or event.get("firstTimestamp") or event["metadata"]["creationTimestamp"]
            mark(f"Pod/{involved['name']}", what, stamp, first=what != "ended")
            mark(f"Pod/{involved['name']}", "made", stamp)  # a deleted pod: its first event
    if not marks:
        return ["nothing in the namespace"]
    zero = min(min(m.values()) for m in marks.values())
    columns = ("made", "sched", "start", "ready", "ended")
    rows = [f"{'object':<58} " + " ".join(f"{c:>6}" for c in columns)]
    for name, times in sorted(marks.items(), key=lambda item: min(item[1].values())):
        cells = " ".join(f"{times[c] - zero:>6.0f}" if c in times else f"{'-':>6}" for c in columns)
        rows.append(f"{name:<58} {cells}")
    return rows


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """A failed node test's report carries what a developer would look at first: the pods of its
    namespace and of the release, their events and the end of every container's log (a CI log keeps
    nothing else of a cluster that is gone by the time anyone reads it)."""
    outcome = yield
    report = outcome.get_result()
    funcargs = getattr(item, "funcargs", {})
    if report.when != "call" or not report.failed or "node" not in funcargs:
        return
    cluster: Cluster = funcargs["node"].cluster
    namespaces = [name for name in (funcargs.get("namespace"), RELEASE_NAMESPACE, "kube-system") if name]
    try:
        report.sections.append(("node diagnostics", diagnostics(cluster, namespaces)))
    except Exception as error:  # the report of the failure matters more than these extras
        report.sections.append(("node diagnostics", f"could not gather them: {error!r}"))


# The training workers log to Ray's files, not to the pod's stdout: the newest of them, each's end.
RAY_LOG_TAILS = ('cd /tmp/ray/session_latest/logs 2>/dev/null && for f in $(ls -t worker-*.out worker-*.err '
                 'python-core-worker-*.log raylet.out 2>/dev/null | head -10); do echo "--- $f"; tail -n 25 "$f"; done')


def diagnostics(cluster: Cluster, namespaces: list[str], tail: int = 60) -> str:
    parts = [cluster.kubectl("get", "nodes", "-o", "wide", check=False).stdout]
    for namespace in namespaces:
        for args in (("get", "pods,rayjobs,rayclusters,tunesweeps,trainingjobs,jobs", "-o", "wide"),
                     ("get", "events", "--sort-by=.lastTimestamp")):
            shown = cluster.kubectl(*args, "-n", namespace, check=False, timeout=30)
            parts.append(f"$ kubectl {' '.join(args)} -n {namespace}\n{shown.stdout}{shown.stderr}")
        for pod in cluster.list("pods", namespace):
            name = pod["metadata"]["name"]
            for previous in ("false", "true"):
                logs = cluster.kubectl("logs", "-n", namespace, name, "--all-containers", "--prefix",
                                       f"--previous={previous}", f"--tail={tail}", check=False, timeout=30)
                if logs.stdout:
                    parts.append(f"$ kubectl logs {name} -n {namespace} --previous={previous}\n{logs.stdout}")
            if "ray.io/node-type" in pod["metadata"].get("labels", {}) and pod["status"].get("phase") == "Running":
                parts.append(f"$ (Ray's newest logs in {name})\n" + cluster.kubectl(
                    "exec", "-n", namespace, name, "--", "sh", "-c", RAY_LOG_TAILS, check=False, timeout=30).stdout)
    return "\n".join(parts)


def mlflow_get(release: Release, path: str, params: dict[str, Any] | None = None,
               host: str | None = None) -> dict[str, Any]:
    """A GET on the bundled MLflow's REST API through its Service, with the Host header pods send."""
    query = "?" + "&".join(f"{k}={v}" for k, v in (params or {}).items()) if params else ""
    request = urllib.request.Request(f"{release.mlflow_uri}/api/2.0/mlflow/{path}{query}",
                                     headers={"Host": host or release.mlflow_service_host})
    with urllib.request.urlopen(request, timeout=30) as response:
        return dict(json.loads(response.read()))


def mlflow_client(release: Release) -> Any:
    """An MlflowClient of the bundled server, reached through its Service's ClusterIP."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=release.mlflow_uri)


@dataclass
class TrialRuns:
    """A sweep's trials as MLflow holds them: the child runs in its experiment, and the epochs each reported."""

    client: Any
    experiment: str

    def children(self) -> list[Any]:
        found = self.client.get_experiment_by_name(self.experiment)
        runs = self.client.search_runs([found.experiment_id]) if found else []
        return [r for r in runs if "mlflow.parentRunId" in r.data.tags]

    def epochs(self, run: Any) -> list[int]:
        return sorted(m.step for m in self.client.get_metric_history(run.info.run_id, "val_acc"))


def pods_of(cluster: Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    return cluster.list("pods", namespace, selector)


__all__ = ["OPERATOR_PODS", "REPO", "Node", "Release", "TrialRuns", "mlflow_client", "mlflow_get", "pods_of",
           "results_cluster", "wait_for"]
