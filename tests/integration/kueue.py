"""The real Kueue (tests/cluster/kueue: its manager, CRDs and webhooks, built from its Go module),
run as a process against the test cluster the way its Deployment would run in kueue-system.

Its admission webhooks are the module's own manifests, pointed at the process (a URL on 127.0.0.1
with a serving certificate the cluster's CA signs) and cut down to the kinds it manages here
(RayJobs, Kueue's own): a webhook for a kind it does not serve would refuse every such object. They
are removed when it stops, so the tests after it create RayJobs as before.
"""

from __future__ import annotations

import base64
import copy
import os
import shlex
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from raylight.api.cluster import quantity_value
from raylight_trainer.runtime.ports import free_port
from tests.kube import CLUSTER_SCRIPTS, Cluster, stop_process, wait_for

KUEUE_BUILD = CLUSTER_SCRIPTS / "kueue" / "build"
MANAGED_GROUPS = {"kueue.x-k8s.io"}
MANAGED_RESOURCES = {("ray.io", "rayjobs")}
WEBHOOK_NAME_PREFIX = "raylight-test-kueue-"
METRICS_CERTS = "/etc/kueue/metrics/certs"
QUEUE = "team-queue"


def serving_certificate(cluster: Cluster, directory: Path) -> None:
    """tls.crt and tls.key for 127.0.0.1, signed by the cluster's CA (the webhooks' caBundle)."""
    pki = cluster.directory / "pki"
    key, csr, crt = directory / "tls.key", directory / "tls.csr", directory / "tls.crt"
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kueue-webhook",
                    "-keyout", str(key), "-out", str(csr)], check=True, capture_output=True, timeout=60)
    extensions = directory / "san.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1\n")
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(pki / "ca.crt"), "-CAkey",
                    str(pki / "ca.key"), "-CAcreateserial", "-CAserial", str(directory / "ca.srl"), "-days", "2",
                    "-extfile", str(extensions), "-out", str(crt)], check=True, capture_output=True, timeout=60)


def local_webhooks(manifests: str, port: int, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's webhook configurations with only the webhooks of what it manages here, each called
    at https://127.0.0.1:port at its own path."""
    configurations = []
    for doc in yaml.safe_load_all(manifests):
        if not doc:
            continue
        doc = copy.deepcopy(doc)
        doc["metadata"] = {"name": WEBHOOK_NAME_PREFIX + doc["kind"].lower()}
        kept = []
        for hook in doc["webhooks"]:
            rules = [(group, resource) for rule in hook["rules"] for group in rule["apiGroups"]
                     for resource in rule["resources"]]
            if not all(group in MANAGED_GROUPS or (group, resource.split("/")[0]) in MANAGED_RESOURCES
                       for group, resource in rules):
                continue
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": ca_bundle}
            kept.append(hook)
        doc["webhooks"] = kept
        configurations.append(doc)
    return configurations


class KueueProcess:
    """Kueue's manager on this machine: RayJob integration only, no leader election, its own certificate."""

    def __init__(self, cluster: Cluster, directory: Path) -> None:
        self.cluster, self.directory = cluster, directory
        self.built = Path(subprocess.run([str(KUEUE_BUILD)], check=True, capture_output=True, text=True,
                                         timeout=1800).stdout.strip())
        self.webhook_port, self.health_port = free_port(), free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.webhooks: list[dict[str, Any]] = []

    def start(self) -> None:
        certs = self.directory / "certs"
        certs.mkdir(parents=True, exist_ok=True)
        serving_certificate(self.cluster, certs)
        config = self.directory / "kueue-config.yaml"
        config.write_text(yaml.safe_dump({
            "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration",
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.health_port}"},
            "metrics": {"bindAddress": "0"},
            "webhook": {"host": "127.0.0.1", "port": self.webhook_port, "certDir": str(certs)},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "integrations": {"frameworks": ["ray.io/rayjob"]},
        }))
        self.cluster.kubectl("apply", "--server-side", "--field-manager", "tests-kueue", "-f", str(self.built / "crds"))
        self.cluster.kubectl("wait", "--for", "condition=Established", "--timeout", "60s",
                             *(f"crd/{kind}.kueue.x-k8s.io" for kind in ("clusterqueues", "localqueues",
                                                                         "resourceflavors", "workloads")))
        log = (self.directory / "kueue.log").open("w")
        # Without its own certificate management Kueue reads a metrics certificate from a fixed
        # path, /etc/kueue/metrics/certs: it gets one in a mount namespace of its own, on an overlay
        # of /etc whose changes land in this test's folder (the machine's /etc stays as it is).
        upper, work = self.directory / "etc-upper", self.directory / "etc-work"
        upper.mkdir(exist_ok=True)
        work.mkdir(exist_ok=True)
        manager = shlex.join([str(self.built / "kueue"), f"--config={config}",
                              # The on-demand visibility API serves on a fixed port; nothing here asks it.
                              "--feature-gates=VisibilityOnDemand=false"])
        script = (f"mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},workdir={work} /etc"
                  f" && mkdir -p {METRICS_CERTS} && cp {certs}/tls.crt {certs}/tls.key {METRICS_CERTS}/"
                  f" && exec {manager}")
        self.process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            env={**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig)}, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._ready, timeout=90, interval=0.5, what="Kueue's manager to be ready")
        ca_bundle = base64.b64encode((self.cluster.directory / "pki" / "ca.crt").read_bytes()).decode()
        self.webhooks = local_webhooks((self.built / "webhooks.yaml").read_text(), self.webhook_port, ca_bundle)
        for webhook in self.webhooks:
            self.cluster.kubectl("apply", "--server-side", "--field-manager", "tests-kueue", "-f", "-",
                                 input=yaml.safe_dump(webhook))

    def _ready(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.log()[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=5) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def log(self) -> str:
        return (self.directory / "kueue.log").read_text()

    def stop(self) -> None:
        for webhook in self.webhooks:
            self.cluster.kubectl("delete", webhook["kind"], webhook["metadata"]["name"], "--ignore-not-found",
                                 check=False)
        stop_process(self.process)


def queue_setup(cluster: Cluster, namespace: str, cpu: str = "0", memory: str = "0",
                preemption: dict[str, str] | None = None) -> str:
    """A ResourceFlavor, a ClusterQueue of its own with that quota, and LocalQueue QUEUE; the
    ClusterQueue's name."""
    name = f"cq-{namespace}"
    flavor = {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": "default-flavor"}}
    for doc in (flavor,
                cluster_queue(name, cpu, memory, preemption),
                {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue", "metadata": {"name": QUEUE},
                 "spec": {"clusterQueue": name}}):
        applied = cluster.apply(doc, namespace)
        assert applied.returncode == 0, applied.stderr
    return name


def cluster_queue(name: str, cpu: str, memory: str, preemption: dict[str, str] | None = None) -> dict[str, Any]:
    """A ClusterQueue of cpu and memory quota in one flavor, open to every namespace."""
    spec: dict[str, Any] = {"namespaceSelector": {}, "resourceGroups": [{
        "coveredResources": ["cpu", "memory"],
        "flavors": [{"name": "default-flavor", "resources": [
            {"name": "cpu", "nominalQuota": cpu}, {"name": "memory", "nominalQuota": memory}]}]}]}
    if preemption:
        spec["preemption"] = preemption
    return {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": {"name": name}, "spec": spec}


def workload_of(cluster: Cluster, name: str, namespace: str) -> dict[str, Any] | None:
    found = [w for w in cluster.list("workloads.kueue.x-k8s.io", namespace)
             if any(o["name"] == f"ts-{name}" for o in w["metadata"].get("ownerReferences", []))]
    return found[0] if found else None


def admitted(workload: dict[str, Any] | None) -> bool:
    return any(c["type"] == "Admitted" and c["status"] == "True"
               for c in ((workload or {}).get("status") or {}).get("conditions", []))


def milli(quantity: str) -> int:
    """A quantity in thousandths of its unit (cpu "500m" -> 500, memory "4Gi" -> 4 * 2**30 * 1000)."""
    return round(quantity_value(quantity) * 1000)


def requested(workload: dict[str, Any]) -> dict[str, str]:
    """The cpu and memory a Workload asks Kueue for (every pod of every pod set), as quota values."""
    total = {"cpu": 0, "memory": 0}
    for pod_set in workload["spec"]["podSets"]:
        for container in pod_set["template"]["spec"]["containers"]:
            for resource in total:
                total[resource] += pod_set["count"] * milli(container["resources"]["requests"].get(resource, "0"))
    return {"cpu": f"{total['cpu']}m", "memory": str(total["memory"] // 1000)}
