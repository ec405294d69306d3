"""Every spec field is described: the text becomes the CRD schema and `kubectl explain`."""

from __future__ import annotations

from typing import Any

import pytest

from raylight.api import TrainingJobSpec, TrainingJobStatus, TuneSweepSpec, TuneSweepStatus


def undescribed(schema: dict[str, Any]) -> list[str]:
    defs = schema.get("$defs", {})

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in node:
            return defs[node["$ref"].split("/")[-1]]
        for key in ("anyOf", "allOf"):
            for option in node.get(key, []):
                if "$ref" in option:
                    return defs[option["$ref"].split("/")[-1]]
        return node

    missing = []

    def walk(node: dict[str, Any], path: str, seen: frozenset[str]) -> None:
        for name, prop in node.get("properties", {}).items():
            target = resolve(prop)
            if not (prop.get("description") or target.get("description")):
                missing.append(f"{path}.{name}")
            ref = prop.get("$ref") or next((o["$ref"] for o in prop.get("anyOf", []) if "$ref" in o), None)
            if ref and ref not in seen:
                walk(target, f"{path}.{name}", seen | {ref})
            extra = prop.get("additionalProperties")
            if isinstance(extra, dict) and "$ref" in extra and extra["$ref"] not in seen:
                walk(resolve(extra), f"{path}.{name}.*", seen | {extra["$ref"]})

    walk(schema, "spec", frozenset())
    return missing


@pytest.mark.parametrize("model", [TrainingJobSpec, TuneSweepSpec, TrainingJobStatus, TuneSweepStatus])
def test_every_field_has_a_description(model: type) -> None:
    assert undescribed(model.model_json_schema(by_alias=True)) == []
