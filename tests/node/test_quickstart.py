"""The cluster quickstart as a user runs it: kubectl apply, pods train, kubectl wait, MLflow."""

from __future__ import annotations

import urllib.error

import pytest

from .conftest import REPO, Node, Release, mlflow_get


def test_cluster_quickstart_trains_in_pods_and_reports_to_the_bundled_mlflow(
    node: Node, raylight: Release, namespace: str
) -> None:
    cluster = node.cluster
    results = node.results_volume(namespace)
    applied = cluster.kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / "cluster-quickstart.yaml"))
    assert "created" in applied.stdout
    waited = cluster.kubectl("wait", "-n", namespace, "--for=condition=Succeeded", "--timeout=1500s",
                             "tunesweep/vit-digits-asha", check=False)
    sweep = cluster.get("tunesweep", "vit-digits-asha", namespace)
    assert sweep is not None
    assert waited.returncode == 0, f"{waited.stderr}\nstatus: {sweep.get('status')}"

    status = sweep["status"]
    trials = status["trials"]
    assert trials["total"] == 12 and trials["failed"] == 0
    assert trials["succeeded"] + trials["stoppedEarly"] == 12 and trials["stoppedEarly"] >= 4
    assert status["bestTrial"]["metric"] >= 0.9
    # Checkpoints and the sweep's state are on the shared volume, under the resource's name.
    assert list((results / namespace / "vit-digits-asha").rglob("checkpoint_*")), "no checkpoint on the volume"

    # The in-cluster MLflow, through its Service and with the Host header pods send.
    experiment = mlflow_get(raylight, "experiments/get-by-name", {"experiment_name": "vit-digits-cluster"})
    experiment_id = experiment["experiment"]["experiment_id"]
    runs = mlflow_get(raylight, "runs/search", {"experiment_ids": experiment_id, "max_results": 100})["runs"]
    parents = [r for r in runs if "mlflow.parentRunId" not in {t["key"] for t in r["data"].get("tags", [])}]
    children = [r for r in runs if r not in parents]
    assert len(parents) == 1 and len(children) == 12
    assert parents[0]["info"]["run_id"] == status["mlflow"]["runId"]
    model = mlflow_get(raylight, "registered-models/get", {"name": "vit-digits"})["registered_model"]
    assert model["latest_versions"], "the best model was not registered"


def test_bundled_mlflow_answers_its_service_names_and_refuses_others(node: Node, raylight: Release) -> None:
    short = raylight.mlflow_service_host.split(".")[0] + ":5000"
    for host in (raylight.mlflow_service_host, short, f"raylight-mlflow.{raylight.namespace}.svc.cluster.local:5000"):
        assert "experiments" in mlflow_get(raylight, "experiments/search", {"max_results": 1}, host=host)
    with pytest.raises(urllib.error.HTTPError) as refused:
        mlflow_get(raylight, "experiments/search", {"max_results": 1}, host="attacker.example:5000")
    assert refused.value.code == 403


