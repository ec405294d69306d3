"""The seam between operator and trainer: the RayJob the operator rendered runs as it would in its
head pod (its entrypoint, its env, its mounted manifest) against a local Ray and a real MLflow
server, and the operator's status read-back shows those results."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from raylight.operator.builder import MANIFEST_VOLUME

from .conftest import Cluster, OperatorProcess, wait_for
from .test_operator import status_of

pytestmark = pytest.mark.slow


def tiny_sweep(experiment: str) -> dict[str, Any]:
    return {
        "apiVersion": "raylight.dev/v1alpha1", "kind": "TuneSweep", "metadata": {"name": "seam"},
        "spec": {
            "trial": {"model": {"preset": "vit-nano", "depth": 1, "dim": 32},
                      "data": {"dataset": "synthetic", "syntheticSamples": 128},
                      "training": {"maxEpochs": 3, "batchSize": 32}},
            "searchSpace": {"training.learningRate": {"loguniform": [1e-3, 5e-3]}},
            "numSamples": 2, "maxConcurrentTrials": 1,
            "scheduler": {"asha": {"gracePeriod": 1, "reductionFactor": 2}},
            "mlflow": {"experiment": experiment},
            "cluster": {"volumes": [{"name": "results", "persistentVolumeClaim": {"claimName": "results"}}],
                        "volumeMounts": [{"name": "results", "mountPath": "/results"}],
                        "storagePath": "/results"},
        },
    }


def head_container_command(rayjob: dict[str, Any], root: Path) -> tuple[list[str], dict[str, str]]:
    """The entrypoint with the head pod's filesystem mapped under `root`: the manifest volume's
    files where it is mounted (each item the annotation it names, as the kubelet writes them),
    pod-local paths under root."""
    template = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    head = template["spec"]["containers"][0]
    mount = next(m for m in head["volumeMounts"] if m["name"] == MANIFEST_VOLUME)
    volume = next(v for v in template["spec"]["volumes"] if v["name"] == MANIFEST_VOLUME)
    mounted = root / mount["mountPath"].lstrip("/")
    mounted.mkdir(parents=True)
    for item in volume["downwardAPI"]["items"]:
        annotation = re.fullmatch(r"metadata\.annotations\['(.+)'\]", item["fieldRef"]["fieldPath"])
        assert annotation, item
        (mounted / item["path"]).write_text(template["metadata"]["annotations"][annotation.group(1)])
    args = shlex.split(rayjob["spec"]["entrypoint"])
    assert args[:3] == ["python", "-m", "raylight_trainer"]
    local = [sys.executable, *args[1:]]
    for flag in ("--data-dir", "--storage-path"):
        index = local.index(flag) + 1
        local[index] = str(root / local[index].lstrip("/"))
    local = [str(root / a.lstrip("/")) if a.startswith(mount["mountPath"]) else a for a in local]
    env = {**os.environ, **{e["name"]: e["value"] for e in head.get("env", [])}}
    env.pop("RAY_ADDRESS", None)  # no cluster to join here: the trainer starts a local Ray
    return local, env


def test_rendered_rayjob_trains_and_status_reads_back(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    experiment = f"seam-{namespace}"
    assert kube_cluster.apply(tiny_sweep(experiment), namespace).returncode == 0
    rayjob = wait_for(lambda: kube_cluster.get("rayjob", "ts-seam", namespace), what="the RayJob")
    command, env = head_container_command(rayjob, tmp_path / "pod")
    Path(command[command.index("--data-dir") + 1]).mkdir(parents=True)  # the dataset volume's mount point

    # KubeRay marks the job running as it submits it.
    kube_cluster.patch_status("rayjob", "ts-seam", namespace,
                              {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    wait_for(lambda: status_of(kube_cluster, "ts", "seam", namespace).get("phase") == "Running", what="Running")

    seen_while_running: list[dict[str, Any]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            status = status_of(kube_cluster, "ts", "seam", namespace)
            if status.get("phase") == "Running" and status.get("trials"):
                seen_while_running.append(status)
            done.wait(1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    finished = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    done.set()
    watcher.join()
    assert finished.returncode == 0, finished.stderr[-3000:]
    summary = json.loads(finished.stdout)
    assert summary["trials"]["failed"] == 0 and summary["trials"]["total"] == 2

    assert seen_while_running, "the progress timer never showed the running sweep's trials"
    assert seen_while_running[-1]["mlflow"]["runId"] == summary["mlflow"]["parentRunId"]

    kube_cluster.patch_status("rayjob", "ts-seam", namespace,
                              {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"})
    status = wait_for(lambda: (s := status_of(kube_cluster, "ts", "seam", namespace)).get("phase") == "Succeeded"
                      and s.get("progress") == "2/2" and s, timeout=60, what="the final status")
    trials = status["trials"]
    assert trials["succeeded"] + trials["stoppedEarly"] == 2 and trials["failed"] == 0 and trials["running"] == 0
    assert trials["stoppedEarly"] == summary["trials"]["stopped_early"]
    assert status["bestTrial"]["id"] == summary["bestTrialId"]
    assert status["bestTrial"]["metric"] == pytest.approx(summary["bestMetric"])
    assert status["bestTrial"]["config"] == pytest.approx(summary["bestConfig"])
    assert status["mlflow"] == {"trackingUri": operator.tracking_uri,
                                "experimentId": summary["mlflow"]["experimentId"],
                                "runId": summary["mlflow"]["parentRunId"],
                                "modelUri": summary["mlflow"]["modelUri"]}
    assert summary["mlflow"]["modelUri"].startswith("models:/")
    manifest = yaml.safe_load((tmp_path / "pod" / "etc" / "raylight" / "manifest.yaml").read_text())
    assert manifest["metadata"]["uid"] == rayjob["metadata"]["ownerReferences"][0]["uid"]
