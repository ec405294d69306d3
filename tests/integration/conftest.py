"""A real control plane (tests/cluster/up), the real KubeRay operator, and our operator as a process."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from raylight_trainer.runtime.ports import free_port
from tests.kube import CLUSTER_SCRIPTS, Cluster, cluster_from, kill_process, stop_process, wait_for

__all__ = ["CLUSTER_SCRIPTS", "Cluster", "wait_for"]

REPO = Path(__file__).resolve().parents[2]
# The namespace the real KubeRay operator watches; elsewhere tests drive RayJob status by hand,
# as KubeRay would, where it cannot get there without a kubelet.
KUBERAY_NAMESPACE = "kuberay-watched"


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """etcd + kube-apiserver (RBAC on) + kube-controller-manager, built from Go modules once per machine."""
    directory = tmp_path_factory.mktemp("cluster")
    subprocess.run([str(CLUSTER_SCRIPTS / "up"), str(directory)], check=True, timeout=3600)
    cluster, _ = cluster_from(directory)
    yield cluster
    subprocess.run([str(CLUSTER_SCRIPTS / "down"), str(directory)], check=False, timeout=120)


@pytest.fixture(scope="session")
def kuberay(kube_cluster: Cluster) -> Iterator[str]:
    """The real KubeRay operator, watching one namespace; yields that namespace. It enforces Pod
    Security "restricted", as many teams' namespaces do: every pod KubeRay makes there must pass."""
    kube_cluster.kubectl("create", "namespace", KUBERAY_NAMESPACE)
    kube_cluster.kubectl("label", "namespace", KUBERAY_NAMESPACE, "pod-security.kubernetes.io/enforce=restricted")
    log = (kube_cluster.directory / "kuberay-operator.log").open("w")
    process = subprocess.Popen(
        [str(kube_cluster.bin / "kuberay-operator"), "--watch-namespace", KUBERAY_NAMESPACE,
         "--metrics-addr", "0", "--health-probe-bind-address", f"127.0.0.1:{free_port()}",
         "--enable-leader-election=false"],
        env={**os.environ, "KUBECONFIG": str(kube_cluster.kubeconfig)}, stdout=log, stderr=subprocess.STDOUT,
    )
    yield KUBERAY_NAMESPACE
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="session")
def base_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a venv with `pip install raylight` alone (no trainer extra: no torch, no Ray, no
    MLflow), as the operator image and a laptop that only talks to a cluster have it."""
    venv = tmp_path_factory.mktemp("base-install") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # A copy of the sources (not editable): the wheel's packages, as users get them.
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(REPO)],
                   check=True, timeout=600, cwd=venv.parent)
    return python


@pytest.fixture
def namespace(kube_cluster: Cluster) -> Iterator[str]:
    with kube_cluster.scratch_namespace() as name:
        yield name


class OperatorProcess:
    """`raylight operator` as its own process, so a test can kill it and start it again."""

    def __init__(self, cluster: Cluster, tracking_uri: str, log_path: Path, kubeconfig: Path | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.cluster, self.tracking_uri, self.log_path = cluster, tracking_uri, log_path
        self.kubeconfig = kubeconfig or cluster.kubeconfig  # another identity, e.g. a ServiceAccount's
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0

    def start(self) -> None:
        self.metrics_port, health_port = free_port(), free_port()
        log = self.log_path.open("a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "raylight.cli", "operator", "--kubeconfig", str(self.kubeconfig),
             "--mlflow-tracking-uri", self.tracking_uri, "--trainer-image", "raylight-trainer:test",
             "--metrics-port", str(self.metrics_port), "--health-port", str(health_port),
             "--progress-interval", "1", *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

        def healthy() -> bool:
            assert self.process is not None and self.process.poll() is None, self.log()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=1):
                    return True
            except OSError:
                return False

        wait_for(healthy, timeout=60, what="the operator's liveness endpoint")

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as when a node dies."""
        kill_process(self.process)

    def stop(self) -> None:
        stop_process(self.process)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def log(self) -> str:
        return self.log_path.read_text()[-4000:]


@pytest.fixture
def operator(kube_cluster: Cluster, mlflow_server: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    process = OperatorProcess(kube_cluster, mlflow_server, tmp_path / "operator.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture
def namespaced_operator(kube_cluster: Cluster, mlflow_server: str, tmp_path: Path,
                        namespace: str) -> Iterator[OperatorProcess]:
    """An operator that watches only the test's namespace (`--namespace`): its metrics count only
    this test's resources, not those other tests left in theirs."""
    process = OperatorProcess(kube_cluster, mlflow_server, tmp_path / "operator.log",
                              extra_args=("--namespace", namespace))
    process.start()
    yield process
    process.stop()
