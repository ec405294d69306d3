"""crds/ is generated from raylight.api: a change to the models without `raylight crds crds/` fails here."""

from __future__ import annotations

from pathlib import Path

from raylight.api.crd import build_crd, crd_files

CRDS = Path(__file__).resolve().parents[2] / "crds"


def test_crds_match_the_models() -> None:
    generated = crd_files()
    committed = {p.name: p.read_text() for p in CRDS.glob("*.yaml")}
    assert sorted(committed) == sorted(generated), "crds/ holds other files than the generator writes"
    for name, text in generated.items():
        assert committed[name] == text, f"crds/{name} drifted from raylight.api: run `raylight crds crds/`"


def _walk(schema: dict, path: str = "") -> list[tuple[str, dict]]:
    nodes = [(path, schema)]
    for key, child in (schema.get("properties") or {}).items():
        nodes += _walk(child, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        nodes += _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        nodes += _walk(schema["additionalProperties"], f"{path}{{}}")
    return nodes


def test_schemas_are_structural_and_described() -> None:
    for kind in ("TrainingJob", "TuneSweep"):
        root = build_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, node in _walk(root["properties"]["spec"], "spec"):
            assert not {"$ref", "anyOf", "oneOf", "allOf", "title"} & set(node), f"{kind} {path}: {node}"
            assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{kind} {path} has no type"
            if path.count(".") >= 1 and not path.endswith(("[]", "}")):
                assert node.get("description"), f"{kind} {path} has no description (kubectl explain shows it)"
            if node.get("type") == "string" and "enum" not in node:
                assert "maxLength" in node, f"{kind} {path}: unbounded strings make CEL cost estimates fail"


def test_no_defaults_inside_list_items() -> None:
    """A defaulted field in a list item makes every client-side apply report `configured`."""
    def walk(node: object, in_items: bool) -> None:
        if isinstance(node, dict):
            assert not (in_items and "default" in node), node
            for key, value in node.items():
                walk(value, in_items or key == "items")

    for kind in ("TrainingJob", "TuneSweep"):
        walk(build_crd(kind)["spec"]["versions"][0]["schema"], False)
