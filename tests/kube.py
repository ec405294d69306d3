"""A test cluster (tests/cluster/up) as the tests drive it: kubectl and helm with its kubeconfig."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CLUSTER_SCRIPTS = Path(__file__).resolve().parent / "cluster"


def wait_for(predicate: Callable[[], Any], timeout: float = 30, interval: float = 0.2, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


@dataclass
class Cluster:
    directory: Path
    kubeconfig: Path
    bin: Path

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """kubectl with this cluster's kubeconfig. Its process is given 120 s, or a minute more than
        a `--timeout=...s` among args (a `kubectl wait` of 20 minutes must not be cut at 120 s)."""
        result = subprocess.run(
            [str(self.bin / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=input, capture_output=True, text=True, timeout=timeout or process_timeout(args),
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(self.bin / "helm"), "--kubeconfig", str(self.kubeconfig), *args],
                                capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed: {result.stderr}")
        return result

    def kubeconfig_for(self, service_account: str, namespace: str, path: Path) -> Path:
        """A kubeconfig that authenticates as a ServiceAccount (a TokenRequest token), as its pod would."""
        token = self.kubectl("create", "token", service_account, "-n", namespace, "--duration", "2h").stdout.strip()
        config = yaml.safe_load(self.kubeconfig.read_text())
        config["users"] = [{"name": service_account, "user": {"token": token}}]
        config["contexts"][0]["context"]["user"] = service_account
        path.write_text(yaml.safe_dump(config))
        return path

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        result = self.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr:
                return None
            raise AssertionError(result.stderr)
        return dict(json.loads(result.stdout))

    def service_address(self, name: str, namespace: str, timeout: float = 60) -> tuple[str, int]:
        """The ClusterIP and first port of a Service, once this host reaches it. A pod's Ready comes
        before kube-proxy's rules for it: until it syncs, the Service's "no endpoints" rule refuses
        connections at once (a node test's first request failed so)."""
        service = self.get("service", name, namespace)
        assert service is not None, f"no service {namespace}/{name}"
        address = (service["spec"]["clusterIP"], int(service["spec"]["ports"][0]["port"]))

        def accepts() -> bool:
            try:
                socket.create_connection(address, timeout=2).close()
            except OSError:
                return False
            return True

        wait_for(accepts, timeout=timeout, interval=0.5, what=f"service {namespace}/{name} at {address} to accept")
        return address

    def list(self, kind: str, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        args = ["get", kind, "-n", namespace, "-o", "json"] + (["-l", selector] if selector else [])
        return list(json.loads(self.kubectl(*args).stdout)["items"])

    def apply(self, doc: dict[str, Any] | str, namespace: str) -> subprocess.CompletedProcess[str]:
        text = doc if isinstance(doc, str) else yaml.safe_dump(doc)
        return self.kubectl("apply", "-n", namespace, "-f", "-", input=text, check=False)

    @contextmanager
    def scratch_namespace(self) -> Iterator[str]:
        """A namespace of its own for one test, deleted (without waiting) when it ends."""
        name = f"t-{uuid.uuid4().hex[:8]}"
        self.kubectl("create", "namespace", name)
        try:
            yield name
        finally:
            self.kubectl("delete", "namespace", name, "--wait=false", check=False)

    def patch_status(self, kind: str, name: str, namespace: str, status: dict[str, Any]) -> None:
        self.kubectl("patch", kind, name, "-n", namespace, "--subresource", "status", "--type", "merge",
                     "-p", json.dumps({"status": status}))


def kill_process(process: subprocess.Popen[Any] | None) -> None:
    """SIGKILL and reap: no clean shutdown, as when a node dies."""
    assert process is not None
    process.kill()
    process.wait(timeout=30)


def stop_process(process: subprocess.Popen[Any] | None, grace_s: float = 30) -> None:
    """SIGTERM, and SIGKILL if it has not ended within grace_s; nothing if it already ended."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        kill_process(process)


def process_timeout(kubectl_args: tuple[str, ...], default: float = 120) -> float:
    """How long a kubectl process may run: its own --timeout (seconds, minutes or hours) plus a minute."""
    for arg in kubectl_args:
        found = re.fullmatch(r"--timeout=(\d+)([smh]?)", arg)
        if found:
            seconds = int(found.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[found.group(2)]
            return max(default, seconds + 60.0)
    return default


def cluster_from(directory: Path) -> tuple[Cluster, dict[str, str]]:
    """The cluster tests/cluster/up started in directory, and what it wrote to directory/env."""
    env = dict(line.removeprefix("export ").split("=", 1) for line in (directory / "env").read_text().splitlines())
    return Cluster(directory, Path(env["KUBECONFIG"]), Path(env["RAYLIGHT_CLUSTER_BIN"])), env
