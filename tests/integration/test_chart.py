"""The Helm chart: lint, schema, and its output on the real API server; RBAC proven by running the
operator as the chart's ServiceAccount through a whole TuneSweep flow."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import REPO, Cluster, OperatorProcess, wait_for
from .private_api_server import PrivateApiServer
from .test_operator import gpu_sweep, status_of

CHART = REPO / "charts" / "raylight"
VALUES = sorted((CHART / "ci").glob("*.yaml"))


def assert_never_forbidden(log: str) -> None:
    """No request was refused (kopf logs them as APIForbiddenError ... status=403)."""
    refused = [line for line in log.splitlines() if "forbidden" in line.lower() or "status=403" in line]
    assert not refused, "\n".join(refused[:5])


def render(cluster: Cluster, namespace: str, *args: str, release: str = "raylight") -> list[dict[str, Any]]:
    text = cluster.helm("template", release, str(CHART), "-n", namespace, *args).stdout
    return [d for d in yaml.safe_load_all(text) if d]


def test_chart_crds_are_the_generated_ones() -> None:
    for file in (REPO / "crds").glob("*.yaml"):
        assert (CHART / "crds" / file.name).read_text() == file.read_text(), \
            f"charts/raylight/crds/{file.name} drifted from crds/: copy it (`raylight crds charts/raylight/crds`)"


def test_every_value_is_described_in_the_schema() -> None:
    """`helm show values` and IDEs read the schema's descriptions; values.yaml and the schema agree."""
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict[str, Any], given: Any, prefix: str = "") -> list[str]:
        problems = []
        for key, prop in node.get("properties", {}).items():
            if not prop.get("description"):
                problems.append(f"{prefix}{key}: no description")
            if isinstance(given, dict) and key not in given:
                problems.append(f"{prefix}{key}: in the schema, not in values.yaml")
            problems += walk(prop, given.get(key) if isinstance(given, dict) else None, f"{prefix}{key}.")
        if isinstance(given, dict) and node.get("properties"):
            problems += [f"{prefix}{key}: in values.yaml, not in the schema"
                         for key in given if key not in node["properties"]]
        return problems

    assert walk(schema, values) == []


@pytest.mark.parametrize("values", [None, *VALUES], ids=["default", *(v.stem for v in VALUES)])
def test_lint_strict(kube_cluster: Cluster, values: Path | None) -> None:
    result = kube_cluster.helm("lint", "--strict", str(CHART), *(["-f", str(values)] if values else []), check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("setting", "message"), [
    ("replicaCount=0", "at '/replicaCount': minimum: got 0, want 1"),
    ("logLevel=verbose", "at '/logLevel': value must be one of 'info', 'debug'"),
    ("replicas=2", "additional properties 'replicas' not allowed"),
    ("watchNamespaces[0]=Team_A", "at '/watchNamespaces/0'"),
    ("mlflow.trackingUri=mlflow.example.com", "at '/mlflow/trackingUri'"),
])
def test_bad_values_are_refused_with_the_key(kube_cluster: Cluster, setting: str, message: str) -> None:
    result = kube_cluster.helm("lint", "--strict", str(CHART), "--set", setting, check=False)
    assert result.returncode != 0 and message in result.stdout + result.stderr, result.stdout + result.stderr


def test_no_mlflow_at_all_is_refused(kube_cluster: Cluster) -> None:
    result = kube_cluster.helm("template", "raylight", str(CHART), "--set", "mlflow.server.enabled=false", check=False)
    assert result.returncode != 0 and "No MLflow: set mlflow.trackingUri" in result.stderr


def test_rules_are_least_privilege(kube_cluster: Cluster) -> None:
    for values in [None, *VALUES]:
        docs = render(kube_cluster, "raylight-system", *(["-f", str(values)] if values else []))
        roles = [d for d in docs if d["kind"] in ("Role", "ClusterRole")]
        assert roles
        for role in roles:
            for rule in role["rules"]:
                for key in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule.get(key, []), f"{values}: wildcard in {role['kind']} {rule}"
                assert "secrets" not in rule["resources"], "the operator reads no Secret"
                assert not {"update", "deletecollection", "escalate", "bind", "impersonate"} & set(rule["verbs"])
                if {"pods", "trainingjobs", "tunesweeps"} & set(rule["resources"]):
                    # Pods are read to explain a run; our resources only watched (status is its own).
                    assert set(rule["verbs"]) == {"get", "list", "watch"}, rule
                if "events" in rule["resources"]:
                    # Posted, and a stuck pod's Warnings read: never changed or deleted.
                    assert set(rule["verbs"]) == {"create", "list"}, rule


def test_hardened_by_default(kube_cluster: Cluster) -> None:
    docs = render(kube_cluster, "raylight-system")
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert container["resources"]["requests"], f"{container['name']} has no requests"


def test_the_bundled_mlflow_for_strict_clusters(kube_cluster: Cluster) -> None:
    """One SQLite writer, a liveness probe, a PVC of the user's, pull secrets and scheduling of its own."""
    docs = render(kube_cluster, "raylight-system", "--set", "mlflow.server.persistence.existingClaim=mlflow-store",
                  "--set", "imagePullSecrets[0].name=regcred", "--set", "mlflow.server.nodeSelector.pool=system",
                  "--set", "mlflow.server.tolerations[0].key=dedicated",
                  "--set", "mlflow.server.tolerations[0].operator=Exists")
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"], "the user's claim, none of the chart's"
    pod = next(d for d in docs if d["metadata"]["name"] == "raylight-mlflow" and d["kind"] == "Deployment")
    spec = pod["spec"]["template"]["spec"]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}] and spec["nodeSelector"] == {"pool": "system"}
    assert spec["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert {"name": "store", "persistentVolumeClaim": {"claimName": "mlflow-store"}} in spec["volumes"]
    container = spec["containers"][0]
    assert "--workers=1" in container["args"] and container["livenessProbe"]["httpGet"]["path"] == "/health"
    refused = kube_cluster.helm("template", "raylight", str(CHART), "--set", "mlflow.server.workers=2", check=False)
    assert refused.returncode != 0 and "mlflow.server.workers: SQLite takes one writer" in refused.stderr
    postgres = render(kube_cluster, "raylight-system", "--set", "mlflow.server.workers=4",
                      "--set", "mlflow.server.backendStoreUri=postgresql://mlflow@db/mlflow")
    server = next(d for d in postgres if d["metadata"]["name"] == "raylight-mlflow" and d["kind"] == "Deployment")
    assert "--workers=4" in server["spec"]["template"]["spec"]["containers"][0]["args"]
    notes = kube_cluster.helm("install", "raylight", str(CHART), "--dry-run", "-n", "raylight-system").stdout
    assert "has no authentication" in notes


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_each_selector_picks_one_workload(kube_cluster: Cluster) -> None:
    """The operator's Deployment, metrics Service and ServiceMonitor never pick the bundled MLflow's
    pods or Service (`kubectl logs deploy/raylight`, Prometheus), nor MLflow's the operator's."""
    docs = render(kube_cluster, "raylight-system", "-f", str(CHART / "ci" / "monitoring-values.yaml"))
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
            for d in docs if d["kind"] == "Deployment"}
    assert set(pods) == {"raylight", "raylight-mlflow"}
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    picked = {f"Deployment {d['metadata']['name']}": d["spec"]["selector"]["matchLabels"]
              for d in docs if d["kind"] == "Deployment"}
    picked |= {f"Service {name}": d["spec"]["selector"] for name, d in services.items()}
    owners = {"Deployment raylight": "raylight", "Service raylight-metrics": "raylight",
              "Deployment raylight-mlflow": "raylight-mlflow", "Service raylight-mlflow": "raylight-mlflow"}
    for picker, selector in picked.items():
        assert [name for name, labels in pods.items() if selects(selector, labels)] == [owners[picker]], picker
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    assert [name for name, d in services.items()
            if selects(monitor["spec"]["selector"]["matchLabels"], d["metadata"]["labels"])] == ["raylight-metrics"]


@pytest.mark.parametrize("values", [None, *(v for v in VALUES if "monitoring" not in v.stem)],
                         ids=["default", *(v.stem for v in VALUES if "monitoring" not in v.stem)])
def test_rendered_chart_is_accepted_by_the_api_server(kube_cluster: Cluster, values: Path | None,
                                                      tmp_path: Path) -> None:
    release_ns = f"rl-{values.stem[:12] if values else 'default'}"
    kube_cluster.kubectl("create", "namespace", release_ns, check=False)
    # A release of its own: cluster-scoped RBAC objects are named after the release.
    docs = render(kube_cluster, release_ns, "--include-crds", *(["-f", str(values)] if values else []),
                  release=release_ns)
    for namespace in {d["metadata"].get("namespace") for d in docs} - {None, release_ns}:
        kube_cluster.kubectl("create", "namespace", namespace, check=False)
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    applied = kube_cluster.kubectl("apply", "--server-side", "--field-manager", "helm-test", "-f", str(manifest),
                                   check=False)
    assert applied.returncode == 0, applied.stderr
    again = kube_cluster.kubectl("apply", "--server-side", "--field-manager", "helm-test", "-f", str(manifest))
    assert "serverside-applied" in again.stdout


def install_as_service_account(kube_cluster: Cluster, release_ns: str, tmp_path: Path,
                               *helm_args: str) -> Path:
    kube_cluster.kubectl("create", "namespace", release_ns, check=False)
    docs = [d for d in render(kube_cluster, release_ns, *helm_args)
            if d["kind"] in ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")]
    for namespace in {d["metadata"].get("namespace") for d in docs} - {None}:
        kube_cluster.kubectl("create", "namespace", namespace, check=False)
    (tmp_path / "rbac.yaml").write_text(yaml.safe_dump_all(docs))
    kube_cluster.kubectl("apply", "--server-side", "-f", str(tmp_path / "rbac.yaml"))
    return kube_cluster.kubeconfig_for("raylight", release_ns, tmp_path / "sa.kubeconfig")


def test_operator_as_its_service_account_never_gets_a_403(kube_cluster: Cluster, mlflow_server: str,
                                                          tmp_path: Path) -> None:
    kubeconfig = install_as_service_account(kube_cluster, "raylight-system", tmp_path)
    operator = OperatorProcess(kube_cluster, mlflow_server, tmp_path / "operator.log", kubeconfig=kubeconfig)
    namespace = "rbac-flow"
    kube_cluster.kubectl("create", "namespace", namespace)
    operator.start()
    try:
        assert kube_cluster.apply(gpu_sweep(), namespace).returncode == 0
        wait_for(lambda: kube_cluster.get("rayjob", "ts-gpu-sweep", namespace), what="the RayJob")
        for deployment, job in (("Running", "RUNNING"), ("Complete", "SUCCEEDED")):
            kube_cluster.patch_status("rayjob", "ts-gpu-sweep", namespace,
                                      {"jobDeploymentStatus": deployment, "jobStatus": job})
        wait_for(lambda: status_of(kube_cluster, "ts", "gpu-sweep", namespace).get("phase") == "Succeeded",
                 what="Succeeded")
        # A new run of the finished sweep replaces its RayJob (delete), suspend patches it.
        assert kube_cluster.apply(gpu_sweep(numSamples=6, suspend=True), namespace).returncode == 0
        wait_for(lambda: (kube_cluster.get("rayjob", "ts-gpu-sweep", namespace) or {}).get("spec", {}).get("suspend"),
                 timeout=60, what="the new, suspended RayJob")
        bad = gpu_sweep("bad")
        bad["spec"]["trial"]["model"] = {"preset": "vit-nano", "imageSize": 30}
        assert kube_cluster.apply(bad, namespace).returncode == 0
        wait_for(lambda: status_of(kube_cluster, "ts", "bad", namespace).get("phase") == "Failed", what="Failed")
        kube_cluster.kubectl("delete", "ts", "gpu-sweep", "-n", namespace)
    finally:
        operator.stop()
    log = operator.log_path.read_text()
    assert_never_forbidden(log)
    events = [e["reason"] for e in kube_cluster.list("events", namespace)]
    assert "Succeeded" in events and "InvalidSpec" in events  # events were posted as the ServiceAccount


def test_namespaced_install_sees_only_its_namespaces(kube_cluster: Cluster, mlflow_server: str,
                                                     tmp_path: Path) -> None:
    kubeconfig = install_as_service_account(kube_cluster, "raylight-ns", tmp_path, "--set", "watchNamespaces={team-x}")
    allowed = kube_cluster.kubectl("--kubeconfig", str(kubeconfig), "auth", "can-i", "patch", "rayjobs.ray.io",
                                   "-n", "team-x", check=False).stdout.strip()
    denied = kube_cluster.kubectl("--kubeconfig", str(kubeconfig), "auth", "can-i", "patch", "rayjobs.ray.io",
                                  "-n", "default", check=False).stdout.strip()
    assert (allowed, denied) == ("yes", "no")
    operator = OperatorProcess(kube_cluster, mlflow_server, tmp_path / "operator.log", kubeconfig=kubeconfig,
                               extra_args=("--namespace", "team-x"))
    operator.start()
    try:
        assert kube_cluster.apply(gpu_sweep("mine"), "team-x").returncode == 0
        kube_cluster.kubectl("create", "namespace", "team-y", check=False)
        assert kube_cluster.apply(gpu_sweep("not-mine"), "team-y").returncode == 0
        wait_for(lambda: kube_cluster.get("rayjob", "ts-mine", "team-x"), what="the RayJob in team-x")
    finally:
        operator.stop()
    assert kube_cluster.get("rayjob", "ts-not-mine", "team-y") is None
    log = operator.log_path.read_text()
    assert_never_forbidden(log)


def test_helm_install_upgrade_and_uninstall(kube_cluster: Cluster, tmp_path: Path) -> None:
    """The real `helm install`: its live lookups find KubeRay's CRD; NOTES say what to do next."""
    # A release name of its own: other tests applied the default release's cluster-scoped RBAC.
    installed = kube_cluster.helm("install", "rl-install", str(CHART), "-n", "rl-install", "--create-namespace")
    assert "kubectl get tunesweeps -w" in installed.stdout
    deployments = {d["metadata"]["name"] for d in kube_cluster.list("deployments", "rl-install")}
    assert deployments == {"rl-install-raylight", "rl-install-raylight-mlflow"}

    # The README's upgrade: CRDs first (helm upgrade leaves installed CRDs as they are), then the release.
    newer = tmp_path / "crds"
    newer.mkdir()
    for file in (CHART / "crds").glob("*.yaml"):
        crd = yaml.safe_load(file.read_text())
        crd["metadata"]["labels"]["raylight.dev/upgraded"] = "yes"  # stands for a newer chart's change
        (newer / file.name).write_text(yaml.safe_dump(crd))
    for directory in (newer, CHART / "crds"):  # the newer CRDs, then back to this chart's
        kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(directory))
        label = kube_cluster.kubectl("get", "crd", "tunesweeps.raylight.dev",
                                     "-o", "jsonpath={.metadata.labels.raylight\\.dev/upgraded}").stdout
        assert label == ("yes" if directory == newer else "")
    kube_cluster.helm("upgrade", "rl-install", str(CHART), "-n", "rl-install", "--reuse-values")

    kube_cluster.helm("uninstall", "rl-install", "-n", "rl-install")
    assert kube_cluster.list("deployments", "rl-install") == []
    # The experiments' volume outlives the release.
    assert [p["metadata"]["name"] for p in kube_cluster.list("pvc", "rl-install")] == ["rl-install-raylight-mlflow"]


def reconciles(operator: OperatorProcess) -> float:
    lines = [line for line in operator.metrics().splitlines() if line.startswith("raylight_reconciles_total")]
    return sum(float(line.split()[-1]) for line in lines)


def test_replicas_elect_one_leader_and_a_standby_takes_over(kube_cluster: Cluster, mlflow_server: str,
                                                            tmp_path: Path) -> None:
    """Two replicas as the chart's ServiceAccount (replicaCount 2): one reconciles, the other stands by
    with a warm cache and takes over when the leader dies without a word (SIGKILL)."""
    release = "rl-leader"
    kubeconfig = install_as_service_account(kube_cluster, release, tmp_path, "--set", "replicaCount=2")
    args = next(d for d in render(kube_cluster, release, "--set", "replicaCount=2")
                if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    election = tuple(a for a in args if a.startswith("--leader-election"))
    assert election == ("--leader-election-id=raylight", f"--leader-election-namespace={release}")
    replicas = [OperatorProcess(kube_cluster, mlflow_server, tmp_path / f"replica-{i}.log", kubeconfig=kubeconfig,
                                extra_args=election) for i in range(2)]
    namespace = "rl-leader-work"
    kube_cluster.kubectl("create", "namespace", namespace)
    for replica in replicas:
        replica.start()
    try:
        def holder() -> str:
            lease = kube_cluster.get("lease", "raylight", release) or {}
            return str(lease.get("spec", {}).get("holderIdentity") or "")

        wait_for(holder, timeout=30, what="a leader")
        assert kube_cluster.apply(gpu_sweep("first"), namespace).returncode == 0
        wait_for(lambda: kube_cluster.get("rayjob", "ts-first", namespace), what="the RayJob")
        counts = [reconciles(r) for r in replicas]
        assert sorted(c > 0 for c in counts) == [False, True], f"exactly one replica reconciles: {counts}"
        leader, standby = (replicas[0], replicas[1]) if counts[0] else (replicas[1], replicas[0])
        first_holder = holder()
        leader.kill()
        assert kube_cluster.apply(gpu_sweep("second"), namespace).returncode == 0
        wait_for(lambda: kube_cluster.get("rayjob", "ts-second", namespace), timeout=60,
                 what="the standby to take over")
        assert holder() != first_holder and reconciles(standby) > 0
    finally:
        for replica in replicas:
            replica.stop()
    for replica in replicas:
        assert_never_forbidden(replica.log_path.read_text())


def readme_install_command() -> list[str]:
    """The README's `helm install` of a cluster install, its placeholders given values."""
    text = (REPO / "README.md").read_text()
    start = text.index("helm install raylight charts/raylight")
    command = text[start:text.index("```", start)].replace("\\\n", " ")
    return shlex.split(command.replace("REGISTRY", "registry.test"))


def test_the_readmes_install_refuses_a_cluster_without_kuberay(kube_cluster: Cluster, tmp_path: Path) -> None:
    """On a fresh cluster (an API server of its own on another etcd prefix: nothing installed) with
    --create-namespace, as the README says it: refused, naming KubeRay, and nothing of the release
    left; once KubeRay's RayJob CRD is there, the same command installs."""
    fresh = PrivateApiServer(kube_cluster, tmp_path, ("installer",), {"--etcd-prefix": f"/fresh-{tmp_path.name}"})
    fresh.start()
    try:
        config = fresh.kubeconfig("installer")

        def run(program: str, *args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([str(kube_cluster.bin / program), "--kubeconfig", str(config), *args],
                                  capture_output=True, text=True, timeout=120, cwd=REPO)

        command = readme_install_command()
        assert command[:2] == ["helm", "install"] and "--create-namespace" in command
        refused = run("helm", *command[1:])
        assert refused.returncode != 0 and "KubeRay is not installed" in refused.stderr, refused.stderr
        assert run("helm", "list", "-A", "-q").stdout.strip() == ""
        left = run("kubectl", "get", "deployments,serviceaccounts,clusterroles", "-A",
                   "-l", "app.kubernetes.io/name=raylight", "-o", "name")
        assert left.returncode == 0 and left.stdout.strip() == "", left.stdout

        crd = json.loads(kube_cluster.kubectl("get", "crd", "rayjobs.ray.io", "-o", "json").stdout)
        crd["metadata"] = {"name": crd["metadata"]["name"]}
        crd.pop("status", None)
        created = subprocess.run([str(kube_cluster.bin / "kubectl"), "--kubeconfig", str(config), "create", "-f", "-"],
                                 input=json.dumps(crd), capture_output=True, text=True, timeout=60)
        assert created.returncode == 0, created.stderr
        installed = run("helm", *command[1:])
        assert installed.returncode == 0, installed.stderr
        assert run("kubectl", "get", "deployment", "raylight", "-n", "raylight-system").returncode == 0
    finally:
        fresh.stop()
