"""The example manifests (examples/*.yaml except the kustomization that lists them)."""

from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MANIFESTS = sorted(p for p in EXAMPLES.glob("*.yaml") if p.name != "kustomization.yaml")
# Examples for `raylight run` alone: they keep checkpoints on the local disk, which the operator
# refuses (a Ray cluster's pods need shared storage); each has a cluster twin.
LOCAL_ONLY = {"quickstart.yaml"}
CLUSTER_MANIFESTS = [p for p in MANIFESTS if p.name not in LOCAL_ONLY]
# Examples in sub-folders that need something of the user's first (weights, a bucket): validated,
# not applied with the kustomization.
ELSEWHERE = sorted((EXAMPLES / "finetune").glob("*.yaml"))
