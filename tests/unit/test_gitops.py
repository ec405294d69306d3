"""GitOps pieces: the Argo CD health check (run in Lua 5.1, as Argo CD's gopher-lua), the kustomization."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.examples import CLUSTER_MANIFESTS

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LUA = (EXAMPLES / "gitops" / "argocd-health.lua").read_text()


def health(obj: dict[str, Any]) -> tuple[str, str]:
    lua51 = pytest.importorskip("lupa.lua51")
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)

    def table(value: Any) -> Any:
        if isinstance(value, dict):
            return runtime.table_from({k: table(v) for k, v in value.items()})
        if isinstance(value, list):
            return runtime.table_from([table(v) for v in value])
        return value

    runtime.globals().obj = table(obj)
    result = runtime.execute(LUA)
    return result["status"], result["message"]


def resource(generation: int = 1, **status: Any) -> dict[str, Any]:
    return {"metadata": {"generation": generation}, **({"status": status} if status else {})}


def condition(type_: str, message: str = "") -> dict[str, str]:
    return {"type": type_, "status": "True", "reason": type_, "message": message}


@pytest.mark.parametrize(("obj", "status", "words"), [
    (resource(), "Progressing", "waiting for the operator"),
    (resource(2, observedGeneration=1, phase="Succeeded", conditions=[condition("Succeeded")]), "Progressing",
     "latest spec"),
    (resource(1, observedGeneration=1, phase="Pending", conditions=[]), "Progressing", "phase Pending"),
    (resource(1, observedGeneration=1, phase="Running", progress="3/12", conditions=[condition("Running", "training")]),
     "Progressing", "training (trials 3/12)"),
    (resource(1, observedGeneration=1, phase="Succeeded", conditions=[condition("Succeeded", "done")]), "Healthy",
     "done"),
    (resource(1, observedGeneration=1, phase="Failed",
              conditions=[condition("Failed", "spec.trial.model: imageSize 30 ...")]), "Degraded", "imageSize"),
    (resource(1, observedGeneration=1, phase="Suspended", conditions=[condition("Suspended", "GPUs are free")]),
     "Suspended", "GPUs are free"),
])
def test_argocd_health(obj: dict[str, Any], status: str, words: str) -> None:
    got_status, message = health(obj)
    assert got_status == status and words in message, (got_status, message)


def test_argocd_manifest_embeds_the_health_check() -> None:
    docs = list(yaml.safe_load_all((EXAMPLES / "gitops" / "argocd.yaml").read_text()))
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    for kind in ("TuneSweep", "TrainingJob"):
        assert config["data"][f"resource.customizations.health.raylight.dev_{kind}"] == LUA


def test_kustomization_lists_every_cluster_example_and_its_storage() -> None:
    listed = yaml.safe_load((EXAMPLES / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted([p.name for p in CLUSTER_MANIFESTS] + ["storage/results-pvc.yaml"])
