"""Our CRDs on a real API server: examples apply, bad manifests are refused naming the field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.examples import CLUSTER_MANIFESTS, EXAMPLES, LOCAL_ONLY

from .conftest import REPO, Cluster

QUICKSTART = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())


def test_crds_and_every_example_apply(kube_cluster: Cluster, namespace: str) -> None:
    kube_cluster.kubectl("apply", "-f", str(REPO / "crds"))
    # The local-only quickstart is a valid resource too: the operator, not the schema, refuses
    # its pod-local storage. It goes to a namespace of its own (it shares its name with its twin).
    local = kube_cluster.kubectl("create", "namespace", f"{namespace}-local")
    assert local.returncode == 0
    for file in LOCAL_ONLY:
        result = kube_cluster.kubectl("apply", "-n", f"{namespace}-local", "-f", str(EXAMPLES / file), check=False)
        assert result.returncode == 0, f"{file}: {result.stderr}"
    kube_cluster.kubectl("delete", "namespace", f"{namespace}-local", "--wait=false")
    listed = [*CLUSTER_MANIFESTS, EXAMPLES / "storage" / "results-pvc.yaml"]
    for file in listed:
        result = kube_cluster.kubectl("apply", "-n", namespace, "-f", str(file), check=False)
        assert result.returncode == 0, f"{file.name}: {result.stderr}"
    # The kustomization (what Argo CD and Flux apply) holds the same objects: nothing changes.
    result = kube_cluster.kubectl("apply", "-n", namespace, "-k", str(REPO / "examples"))
    assert result.stdout.count("unchanged") == len(listed), result.stdout
    names = kube_cluster.kubectl("get", "raylight", "-n", namespace, "-o", "name").stdout.split()
    assert "tunesweep.raylight.dev/vit-digits-asha" in names and "trainingjob.raylight.dev/vit-digits" in names
    # Server-side defaults come from the models: the stored spec is the whole spec.
    stored = kube_cluster.get("ts", "vit-digits-asha", namespace)
    assert stored is not None
    assert stored["spec"]["trial"]["training"]["gradClip"] == 1.0
    assert stored["spec"]["cluster"]["head"] == {"cpu": "500m", "memory": "6Gi"}
    assert stored["spec"]["cluster"]["ttlSecondsAfterFinished"] == 0
    # Applying the same manifest again changes nothing.
    again = kube_cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "cluster-quickstart.yaml"))
    assert "unchanged" in again.stdout


def _with(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(QUICKSTART)
    node = doc
    *parents, leaf = path.split("/")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return doc


INVALID = [
    ("unknown field", _with("spec/trial/training/learningRat", 0.1), ["unknown field", "learningRat"]),
    ("bound", _with("spec/numSamples", 0), ["spec.numSamples", "greater than or equal to 1"]),
    ("enum", _with("spec/trial/model/preset", "vit-huge"), ["spec.trial.model.preset", "Unsupported value"]),
    ("cel: concurrency", _with("spec/maxConcurrentTrials", 20), ["spec", "maxConcurrentTrials must not exceed"]),
    ("two distributions", _with("spec/searchSpace/training.learningRate", {"uniform": [0.1, 0.2], "choice": [1]}),
     ["spec.searchSpace.training.learningRate", "must have at most 1"]),
    ("scheduler", _with("spec/scheduler", {"asha": {}, "fifo": {}}), ["spec.scheduler", "exactly one"]),
    ("fractional gpus", _with("spec/trial/resources", {"workers": 2, "gpusPerWorker": 0.5}),
     ["spec.trial.resources", "fraction of a GPU"]),
    ("dataset path", _with("spec/trial/data", {"dataset": "cifar10"}), ["spec.trial.data", "data.path"]),
    ("objective", _with("spec/objective", {"metric": "val_loss", "mode": "max"}), ["spec.objective", "set mode"]),
    ("quantity", _with("spec/cluster", {"head": {"cpu": "two"}}), ["spec.cluster.head.cpu", "should match"]),
    ("preset of another architecture",
     _with("spec/trial/model", {"architecture": "efficientnet", "preset": "vit-nano"}),
     ["spec.trial.model", "preset does not fit architecture"]),
    ("vit field on efficientnet", _with("spec/trial/model", {"architecture": "efficientnet", "depth": 3}),
     ["spec.trial.model", "are ViT fields"]),
    ("early stopping under asha", _with("spec/trial/callbacks", {"earlyStopping": {"patience": 2}}),
     ["spec", "ASHA already stops"]),
    ("asha grace period past maxEpochs", _with("spec/scheduler", {"asha": {"gracePeriod": 50}}),
     ["spec.scheduler.asha.gracePeriod", "must not exceed maxT"]),
    ("asha grace period past maxT", _with("spec/scheduler", {"asha": {"gracePeriod": 5, "maxT": 4}}),
     ["spec.scheduler.asha.gracePeriod", "must not exceed maxT"]),
    ("f1 minimised", _with("spec/objective", {"metric": "val_f1", "mode": "min"}), ["spec.objective", "set mode"]),
    ("pretrained of no known form", _with("spec/trial/model/pretrained", "ftp://host/vit.pth"),
     ["spec.trial.model.pretrained", "pretrained must be a path"]),
    ("timm with a preset",
     _with("spec/trial/model", {"architecture": "timm", "name": "resnet18", "preset": "vit-nano"}),
     ["spec.trial.model", "a timm model is sized by its name"]),
    ("name without timm", _with("spec/trial/model", {"architecture": "vit", "name": "resnet18"}),
     ["spec.trial.model.name", "set it with architecture timm"]),
    ("freeze every epoch", _with("spec/trial/training", {"maxEpochs": 3, "freezeEpochs": 3}),
     ["spec.trial.training.freezeEpochs", "smaller than maxEpochs"]),
    ("layer decay above 1", _with("spec/trial/training/layerDecay", 1.5),
     ["spec.trial.training.layerDecay", "less than or equal to 1"]),
]


@pytest.mark.parametrize(("case", "doc", "expected"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_manifests_are_refused_naming_the_field(
    kube_cluster: Cluster, namespace: str, case: str, doc: dict[str, Any], expected: list[str]
) -> None:
    result = kube_cluster.apply(doc, namespace)
    assert result.returncode != 0, f"{case}: the API server accepted it"
    for text in expected:
        assert text in result.stderr, f"{case}: {text!r} not in {result.stderr}"


def test_spec_is_fixed_while_running_except_suspend(kube_cluster: Cluster, namespace: str) -> None:
    assert kube_cluster.apply(QUICKSTART, namespace).returncode == 0
    kube_cluster.patch_status("ts", "vit-digits-asha", namespace, {"phase": "Running"})
    refused = kube_cluster.apply(_with("spec/numSamples", 6), namespace)
    assert refused.returncode != 0 and "cannot change except spec.suspend" in refused.stderr
    assert kube_cluster.apply(_with("spec/suspend", True), namespace).returncode == 0
    kube_cluster.patch_status("ts", "vit-digits-asha", namespace, {"phase": "Succeeded"})
    assert kube_cluster.apply(_with("spec/numSamples", 6), namespace).returncode == 0, "a finished run may change"


def test_explain_and_printer_columns(kube_cluster: Cluster, namespace: str) -> None:
    explained = kube_cluster.kubectl("explain", "tunesweep.spec.searchSpace").stdout
    assert "Dotted path into the trial spec" in explained and "loguniform" in explained
    explained = kube_cluster.kubectl("explain", "tj.spec.cluster.tolerations").stdout
    assert "Taints the worker pods tolerate" in explained
    assert kube_cluster.apply(QUICKSTART, namespace).returncode == 0
    kube_cluster.patch_status("ts", "vit-digits-asha", namespace, {
        "phase": "Running", "progress": "5/12", "trials": {"running": 2}, "bestTrial": {"id": "t1", "metric": 0.93},
    })
    table = kube_cluster.kubectl("get", "ts", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "TRIALS", "RUNNING", "BEST", "AGE"]
    assert table[1].split()[:5] == ["vit-digits-asha", "Running", "5/12", "2", "0.93"]


def test_crd_files_are_what_the_server_stores(kube_cluster: Cluster) -> None:
    for file in (REPO / "crds").glob("*.yaml"):
        crd = yaml.safe_load(Path(file).read_text())
        stored = kube_cluster.get("crd", crd["metadata"]["name"], "default")
        assert stored is not None
        assert stored["spec"]["versions"][0]["schema"] == crd["spec"]["versions"][0]["schema"], \
            "the server changed (pruned or defaulted) part of our schema"
