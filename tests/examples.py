"""The example manifests (examples/*.yaml except the kustomization that lists them)."""

from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MANIFESTS = sorted(p for p in EXAMPLES.glob("*.yaml") if p.name != "kustomization.yaml")
