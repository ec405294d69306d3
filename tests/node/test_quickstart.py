"""The cluster quickstart as a user runs it: kubectl apply, pods train, kubectl wait, MLflow."""

from __future__ import annotations

import urllib.error

import pytest

from .conftest import REPO, Node, Release, mlflow_client, mlflow_get


def test_cluster_quickstart_trains_in_pods_and_reports_to_the_bundled_mlflow(
    node: Node, raylight: Release, namespace: str
) -> None:
    cluster = node.cluster
    results = node.results_volume(namespace)
    applied = cluster.kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / "cluster-quickstart.yaml"))
    assert "created" in applied.stdout
    waited = cluster.kubectl("wait", "-n", namespace, "--for=condition=Succeeded", "--timeout=1500s",
                             "tunesweep/vit-digits-asha", check=False, timeout=1560)
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
