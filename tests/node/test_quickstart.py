"""The cluster quickstart as a user runs it: kubectl apply, pods train, kubectl wait, MLflow."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
from collections import Counter

import pytest

from .conftest import REPO, Node, Release, mlflow_client, mlflow_get


def test_cluster_quickstart_trains_in_pods_and_reports_to_the_bundled_mlflow(
    node: Node, raylight: Release, namespace: str
) -> None:
    cluster = node.cluster
    # Where Pod Security "restricted" is enforced, as on many teams' namespaces: every pod of the
    # run (head, workers, KubeRay's init containers and submitter) must pass it, and run as it asks.
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    results = node.results_volume(namespace)
    applied = cluster.kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / "cluster-quickstart.yaml"))
    assert "created" in applied.stdout
    # `kubectl wait` as a user runs it; meanwhile the status is read as `kubectl get ts` would.
    waiting = subprocess.Popen(
        [str(cluster.bin / "kubectl"), "--kubeconfig", str(cluster.kubeconfig), "wait", "-n", namespace,
         "--for=condition=Succeeded", "--timeout=1500s", "tunesweep/vit-digits-asha"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen_running: list[dict] = []
    while waiting.poll() is None:
        current = (cluster.get("tunesweep", "vit-digits-asha", namespace) or {}).get("status") or {}
        if current.get("phase") == "Running" and current.get("trials"):
            seen_running.append(current["trials"])
        time.sleep(5)
    sweep = cluster.get("tunesweep", "vit-digits-asha", namespace)
    assert sweep is not None
    assert waiting.returncode == 0, f"{waiting.stdout.read() if waiting.stdout else ''}\nstatus: {sweep.get('status')}"
    # While it ran, the status counted the trials ASHA had stopped (not only at the end).
    midway = [t for t in seen_running if t["stoppedEarly"] >= 1 and t["succeeded"] + t["stoppedEarly"] < 12]
    assert midway, seen_running[-5:]

    status = sweep["status"]
    trials = status["trials"]
    assert trials["total"] == 12 and trials["failed"] == 0
    assert trials["succeeded"] + trials["stoppedEarly"] == 12 and trials["stoppedEarly"] >= 4
    assert status["bestTrial"]["metric"] >= 0.9
    # Checkpoints and the sweep's state are on the shared volume, under the resource's name.
    assert list((results / namespace / "vit-digits-asha").rglob("checkpoint_*")), "no checkpoint on the volume"

    # The in-cluster MLflow, through its Service: one parent run, a child per trial, the model.
    client = mlflow_client(raylight)
    experiment = client.get_experiment_by_name("vit-digits-cluster")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 12
    assert parents[0].info.run_id == status["mlflow"]["runId"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    versions = client.search_model_versions("name = 'vit-digits'")
    assert versions, "the best model was not registered"

    # The driver's log (the RayJob's submitter pod) is not a terminal: a line per trial event.
    driver_log = cluster.kubectl("logs", "-n", namespace, "job/ts-vit-digits-asha").stdout
    for run in children:
        trial_id = run.data.tags["raylight.trial_id"]
        assert f"trial {trial_id} started" in driver_log and f"trial {trial_id} epoch 1/" in driver_log, driver_log
        assert re.search(f"trial {trial_id} (finished|stopped early)", driver_log), driver_log

    # The raylight command as a user runs it; MLflow is reached through the API server's proxy.
    waited = raylight_command(node, "wait", "vit-digits-asha", "-n", namespace)
    assert waited.returncode == 0 and "TuneSweep vit-digits-asha succeeded: val_acc=" in waited.stdout, waited
    shown = raylight_command(node, "trials", "vit-digits-asha", "-n", namespace, "-o", "json")
    assert shown.returncode == 0, shown.stderr
    listed = json.loads(shown.stdout)["trials"]
    assert Counter(t["state"] for t in listed) == {"succeeded": trials["succeeded"],
                                                   "stopped_early": trials["stoppedEarly"]}
    assert {t["runId"] for t in listed} == {r.info.run_id for r in children}
    table = raylight_command(node, "trials", "vit-digits-asha", "-n", namespace).stdout
    assert sum(" STOPPED " in line for line in table.splitlines()) == trials["stoppedEarly"], table
    assert status["mlflow"]["modelUri"] == f"models:/vit-digits/{versions[0].version}"
    fetched = raylight_command(node, "model", "vit-digits-asha", "-n", namespace, "--download",
                               str(cluster.directory / "best-model"), "-o", "json")
    assert fetched.returncode == 0, fetched.stderr
    assert any(f.endswith("data/model.pt2") for f in json.loads(fetched.stdout)["files"]), fetched.stdout
    check_logs(node, namespace, [t["trial"] for t in listed])
    print(f"\n$ kubectl get ts\n{cluster.kubectl('get', 'ts', '-n', namespace).stdout}"
          f"\n$ raylight get\n{raylight_command(node, 'get', '-n', namespace).stdout}\n$ raylight trials\n{table}")


def check_logs(node: Node, namespace: str, trial_ids: list[str]) -> None:
    """raylight logs: the driver's from its pod, a trial's workers' and (once the pod is gone) the
    driver's from the copies the trainer kept in the bundled MLflow."""
    driver = raylight_command(node, "logs", "vit-digits-asha", "-n", namespace)
    assert driver.returncode == 0 and "# pod/" in driver.stderr, driver.stderr
    assert all(f"trial {trial_id} started" in driver.stdout for trial_id in trial_ids), driver.stdout
    worker = raylight_command(node, "logs", "vit-digits-asha", "--trial", trial_ids[0], "-n", namespace)
    assert worker.returncode == 0, worker.stderr
    assert "worker 1/1 on " in worker.stdout and "epoch 1/" in worker.stdout, worker.stdout
    node.cluster.kubectl("delete", "pod", "-n", namespace, "-l", "raylight.dev/role=submitter", "--wait=true")
    kept = raylight_command(node, "logs", "vit-digits-asha", "-n", namespace)
    assert kept.returncode == 0 and "# MLflow run " in kept.stderr, kept.stderr
    assert all(f"trial {trial_id} started" in kept.stdout for trial_id in trial_ids), kept.stdout
    print(f"\n$ raylight logs vit-digits-asha --trial {trial_ids[0]}\n{worker.stdout}")


def raylight_command(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(node.cluster.kubeconfig), "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "raylight.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_bundled_mlflow_answers_its_service_names_and_refuses_others(node: Node, raylight: Release) -> None:
    port = raylight.mlflow_service_host.rsplit(":", 1)[1]
    names = ["raylight-mlflow", f"raylight-mlflow.{raylight.namespace}", raylight.mlflow_service_host.split(":")[0],
             f"raylight-mlflow.{raylight.namespace}.svc.cluster.local"]
    for host in [*names, *(f"{name}:{port}" for name in names)]:
        found = mlflow_get(raylight, "experiments/get-by-name", {"experiment_name": "Default"}, host=host)
        assert found["experiment"]["name"] == "Default", host
    with pytest.raises(urllib.error.HTTPError) as refused:
        mlflow_get(raylight, "experiments/get-by-name", {"experiment_name": "Default"}, host=f"attacker.example:{port}")
    assert refused.value.code == 403
