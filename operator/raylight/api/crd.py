"""CustomResourceDefinitions generated from the spec models: `raylight crds DIR` writes `crds/`.

The pydantic models are the single source; this turns their JSON schema into the structural
OpenAPI v3 schema the API server wants (no $ref, no anyOf/null, OpenAPI 3.0 bounds), with
server-side defaults, bounds on every list, map and string (so CEL cost estimates stay small) and
CEL rules for what the server can check across fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from .base import GROUP, VERSION, SpecModel
from .status import TrainingJobStatus, TuneSweepStatus
from .sweep import TuneSweepSpec
from .trial import TrainingJobSpec

# Bounds where a model gives none: the API server estimates CEL cost from them.
_MAX_STRING = 4096
_MAX_ITEMS = 256
_MAX_PROPERTIES = 256

# Phases in which a RayJob is at work: its spec is fixed then, except suspend.
ACTIVE_PHASES = ("Pending", "Running")


def _models(model: type[BaseModel], found: dict[str, type[BaseModel]]) -> dict[str, type[BaseModel]]:
    """Every model reachable from `model`, by the name its JSON schema $defs use."""
    found[model.__name__] = model
    for info in model.model_fields.values():
        for candidate in _annotation_models(info.annotation):
            if candidate.__name__ not in found:
                _models(candidate, found)
    return found


def _annotation_models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _annotation_models(arg)]


class _Converter:
    def __init__(self, model: type[BaseModel], *, defaults: bool) -> None:
        self.defs = model.model_json_schema(by_alias=True).get("$defs", {})
        self.models = _models(model, {})
        self.defaults = defaults

    def model(self, model: type[BaseModel]) -> dict[str, Any]:
        source = model.model_json_schema(by_alias=True)
        return self.object(model, source)

    def object(self, model: type[BaseModel], source: dict[str, Any]) -> dict[str, Any]:
        fields = {info.alias or name: info for name, info in model.model_fields.items()}
        properties: dict[str, Any] = {}
        for key, prop in source.get("properties", {}).items():
            schema = self.node(prop)
            info = fields[key]
            if self.defaults and "default" not in schema and info.default_factory is not None:
                value = info.default_factory()  # type: ignore[call-arg]
                if isinstance(value, SpecModel):
                    schema["default"] = value.wire()
            properties[key] = schema
        result: dict[str, Any] = {"type": "object"}
        if properties:  # the API server drops an empty one: keep what we write equal to what it stores
            result["properties"] = properties
        if source.get("description"):
            result["description"] = _clean(source["description"])
        if source.get("required"):
            result["required"] = source["required"]
        extra = model.model_config.get("json_schema_extra")
        if isinstance(extra, dict):
            for key in ("minProperties", "maxProperties", "x-kubernetes-validations"):
                if key in extra:
                    result[key] = extra[key]
        return result

    def node(self, source: dict[str, Any]) -> dict[str, Any]:
        source = dict(source)
        options = [o for o in source.pop("anyOf", []) if o.get("type") != "null"]
        if options:
            assert len(options) == 1, f"unions other than X | None do not map to a structural schema: {source}"
            source = {**options[0], **source}
        if source.get("default", ...) is None:
            del source["default"]
        if "$ref" in source:
            name = source.pop("$ref").split("/")[-1]
            nested = self.object(self.models[name], self.defs[name])
            if source.get("description"):
                nested["description"] = _clean(source["description"])
            if self.defaults and "default" in source:
                nested["default"] = source["default"]
            return nested
        schema: dict[str, Any] = {}
        kind = source.get("type")
        if "const" in source:
            schema.update(type="string", enum=[source["const"]])
        elif kind == "object":
            schema["type"] = "object"
            extra = source.get("additionalProperties", True)
            if extra is True or extra == {}:
                schema["x-kubernetes-preserve-unknown-fields"] = True
            else:
                schema["additionalProperties"] = self.node(extra)
                schema["maxProperties"] = source.get("maxProperties", _MAX_PROPERTIES)
        elif kind == "array":
            items = source.get("items") or {}
            any_value = {"x-kubernetes-preserve-unknown-fields": True}
            schema.update(type="array", items=self.node(items) if items else any_value)
            schema["maxItems"] = source.get("maxItems", _MAX_ITEMS)
        elif kind is None:
            schema["x-kubernetes-preserve-unknown-fields"] = True
        else:
            schema["type"] = kind
        if kind == "string" and "enum" not in source and "const" not in source:
            schema["maxLength"] = source.get("maxLength", _MAX_STRING)
        for key in ("enum", "minimum", "maximum", "minLength", "maxLength", "minItems", "pattern",
                    "minProperties"):
            if key in source:
                schema[key] = source[key]
        for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if bound in source:  # JSON Schema 2020 number -> OpenAPI 3.0 flag
                schema[plain] = source[bound]
                schema[bound] = True
        if source.get("description"):
            schema["description"] = _clean(source["description"])
        if self.defaults and "default" in source and source["default"] is not PydanticUndefined:
            schema["default"] = source["default"]
        return schema


def _without_item_defaults(schema: Any, in_list: bool = False) -> Any:
    """No server-side defaults inside list items: a client-side `kubectl apply` (and Argo CD)
    replaces a whole list whenever the live one differs from the manifest, and a defaulted field
    in an item makes it differ on every apply."""
    if isinstance(schema, dict):
        return {key: _without_item_defaults(value, in_list or key == "items")
                for key, value in schema.items() if not (in_list and key == "default")}
    if isinstance(schema, list):
        return [_without_item_defaults(value, in_list) for value in schema]
    return schema


def _clean(text: str) -> str:
    return " ".join(text.split())


def _immutability_rule(spec_model: type[BaseModel]) -> dict[str, str]:
    fields = [info.alias or name for name, info in spec_model.model_fields.items() if name != "suspend"]
    same = " && ".join(
        f"(has(self.spec.{f}) == has(oldSelf.spec.{f}) && (!has(self.spec.{f}) || self.spec.{f} == oldSelf.spec.{f}))"
        for f in fields
    )
    active = " || ".join(f"oldSelf.status.phase == '{p}'" for p in ACTIVE_PHASES)
    return {
        "rule": f"!has(oldSelf.status) || !has(oldSelf.status.phase) || !({active}) || ({same})",
        "message": "the spec of a pending or running run cannot change except spec.suspend: "
        "suspend it first, or create a new resource",
        "reason": "FieldValueForbidden",
    }


KIND_INFO: dict[str, dict[str, Any]] = {
    "TrainingJob": {
        "plural": "trainingjobs",
        "short": ["tj"],
        "spec": TrainingJobSpec,
        "status": TrainingJobStatus,
        "columns": [
            ("Phase", "string", ".status.phase", "Pending, Running, Succeeded, Failed or Suspended"),
            ("Workers", "integer", ".spec.resources.workers", "Data-parallel training workers"),
            ("GPUs", "number", ".spec.resources.gpusPerWorker", "GPUs per worker"),
            ("Epoch", "integer", ".status.epoch", "Last completed epoch"),
            ("Metric", "number", ".status.metric", "Objective at the last epoch"),
        ],
    },
    "TuneSweep": {
        "plural": "tunesweeps",
        "short": ["ts"],
        "spec": TuneSweepSpec,
        "status": TuneSweepStatus,
        "columns": [
            ("Phase", "string", ".status.phase", "Pending, Running, Succeeded, Failed or Suspended"),
            ("Trials", "string", ".status.progress", "Trials finished / total"),
            ("Running", "integer", ".status.trials.running", "Trials training now"),
            ("Best", "number", ".status.bestTrial.metric", "Best objective value so far"),
        ],
    },
}


def build_crd(kind: str) -> dict[str, Any]:
    """The CustomResourceDefinition of TrainingJob or TuneSweep."""
    info = KIND_INFO[kind]
    spec_model, status_model = info["spec"], info["status"]
    spec = _without_item_defaults(_Converter(spec_model, defaults=True).model(spec_model))
    spec["default"] = {}  # so that server-side defaults fill an omitted spec too
    status = _Converter(status_model, defaults=False).model(status_model)
    conditions = status["properties"]["conditions"]
    conditions.update({"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    plural = info["plural"]
    columns = [
        {"name": name, "type": type_, "jsonPath": path, "description": description}
        for name, type_, path, description in info["columns"]
    ] + [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "raylight"}},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": info["short"],
                "categories": ["raylight"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": _clean(spec_model.__doc__ or kind),
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                            "x-kubernetes-validations": [_immutability_rule(spec_model)],
                        }
                    },
                }
            ],
        },
    }


def crd_files() -> dict[str, str]:
    """File name -> YAML text of every CRD, as committed under crds/."""
    files = {}
    for kind, info in KIND_INFO.items():
        text = yaml.safe_dump(build_crd(kind), sort_keys=False, width=120)
        header = "# Generated from raylight.api by `raylight crds crds/`; do not edit.\n"
        files[f"{GROUP}_{info['plural']}.yaml"] = header + text
    return files


def write_crds(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in crd_files().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written
