"""`raylight get` and `raylight wait` (also `kubectl raylight ...`) against the real API server and
operator, reading what a user reads: table rows, messages and exit codes.

KubeRay's RayJob status is written by the test, as in test_operator (no kubelet runs pods here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from .conftest import Cluster, OperatorProcess, wait_for
from .test_operator import apply_training_job, gpu_sweep, status_of


def raylight(cluster: Cluster, *args: str, kubeconfig: Path | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig or cluster.kubeconfig), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "raylight.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def start_wait(cluster: Cluster, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "raylight.cli", "wait", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_get_lists_both_kinds_and_wait_follows_a_sweep_to_success(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    assert kube_cluster.apply(gpu_sweep(), namespace).returncode == 0
    apply_training_job(kube_cluster, namespace)
    wait_for(lambda: status_of(kube_cluster, "ts", "gpu-sweep", namespace).get("phase") == "Pending",
             what="the sweep's first status")

    listed = raylight(kube_cluster, "get", "-n", namespace)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:] if line.strip()}
    assert set(rows) == {"tunesweep/gpu-sweep", "trainingjob/vit-digits"}, listed.stdout
    assert rows["tunesweep/gpu-sweep"][1:3] == ["Pending", "0/24"]
    as_json = json.loads(raylight(kube_cluster, "get", "-n", namespace, "-o", "json").stdout)
    assert {(r["kind"], r["name"], r["namespace"]) for r in as_json} == {
        ("TuneSweep", "gpu-sweep", namespace), ("TrainingJob", "vit-digits", namespace)}

    # The namespace comes from the kubeconfig's context when -n is not given, as with kubectl.
    config = yaml.safe_load(kube_cluster.kubeconfig.read_text())
    config["contexts"][0]["context"]["namespace"] = namespace
    with_namespace = tmp_path / "kubeconfig"
    with_namespace.write_text(yaml.safe_dump(config))
    by_context = raylight(kube_cluster, "get", "-o", "json", kubeconfig=with_namespace)
    assert len(json.loads(by_context.stdout)) == 2, by_context.stderr

    waiting = start_wait(kube_cluster, "gpu-sweep", "-n", namespace, "--timeout", "120")
    kube_cluster.patch_status("rayjob", "ts-gpu-sweep", namespace, {
        "jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "startTime": "2026-11-25T10:00:00Z",
        "endTime": "2026-11-25T11:00:00Z"})
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err
    assert "TuneSweep gpu-sweep succeeded" in out
    # Once it has ended, wait answers at once.
    again = raylight(kube_cluster, "wait", "tunesweep/gpu-sweep", "-n", namespace, "-o", "json")
    assert again.returncode == 0 and json.loads(again.stdout)["phase"] == "Succeeded"

    # kubectl finds the plugin on PATH: `kubectl raylight get`.
    plugin = shutil.which("kubectl-raylight", path=str(Path(sys.executable).parent))
    assert plugin, "the kubectl-raylight script is not installed next to raylight"
    env = {**os.environ, "PATH": f"{Path(plugin).parent}:{os.environ['PATH']}", "COLUMNS": "200"}
    through_kubectl = subprocess.run(
        [str(kube_cluster.bin / "kubectl"), "raylight", "get", "-n", namespace, "-o", "json"],
        env={**env, "KUBECONFIG": str(kube_cluster.kubeconfig)}, capture_output=True, text=True, timeout=60)
    assert through_kubectl.returncode == 0, through_kubectl.stderr
    assert {r["phase"] for r in json.loads(through_kubectl.stdout) if r["name"] == "gpu-sweep"} == {"Succeeded"}


def test_wait_exits_non_zero_with_the_reason_when_the_run_fails(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    apply_training_job(kube_cluster, namespace)

    timed_out = raylight(kube_cluster, "wait", "vit-digits", "-n", namespace, "--timeout", "2")
    assert timed_out.returncode == 3 and "timed out after 2 s" in timed_out.stderr, timed_out

    waiting = start_wait(kube_cluster, "tj/vit-digits", "-n", namespace)
    kube_cluster.patch_status("rayjob", "tj-vit-digits", namespace, {
        "jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded",
        "message": "The RayJob has passed the activeDeadlineSeconds."})
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 1, (out, err)
    assert "TrainingJob vit-digits failed" in err and "activeDeadlineSeconds" in err


def test_a_wrong_name_says_what_exists_and_how_to_fix_it(kube_cluster: Cluster, namespace: str) -> None:
    missing = raylight(kube_cluster, "wait", "no-such-run", "-n", namespace)
    assert missing.returncode == 1
    assert f"no TrainingJob or TuneSweep named no-such-run in namespace {namespace}" in missing.stderr
    assert "Traceback" not in missing.stderr
    wrong_kind = raylight(kube_cluster, "get", "pods/x", "-n", namespace)
    assert wrong_kind.returncode == 1 and "unknown kind 'pods'" in wrong_kind.stderr
    wrong_context = raylight(kube_cluster, "get", "--context", "nowhere")
    assert wrong_context.returncode == 1 and "--context nowhere: no such context" in wrong_context.stderr
    nothing = raylight(kube_cluster, "get", "-n", namespace)
    assert nothing.returncode == 0 and f"No TrainingJobs or TuneSweeps in namespace {namespace}" in nothing.stdout
