"""Base model for every spec: camelCase on the wire (as Kubernetes), snake_case in Python."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

GROUP = "raylight.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


class SpecModel(BaseModel):
    """Strict wire model: unknown fields are errors, so a typo is never silently ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
        use_attribute_docstrings=True,
    )

    def wire(self) -> dict:
        """The object as it appears in a manifest (camelCase keys, unset optionals dropped)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class FieldProblem(ValueError):
    """A cross-field check's error that is about one field: `path`, camelCase and relative to the
    model that checks it, goes into the error's path (spec.scheduler.asha.gracePeriod: ...)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


def server_rules(*rules: tuple[str, str] | tuple[str, str, str]) -> ConfigDict:
    """A model_config carrying CEL rules (rule, message[, fieldPath]) that the API server checks too;
    fieldPath (".a.b", relative to the model) names the field the error is about."""
    validations: list[Any] = [{"rule": rule[0], "message": rule[1], **({"fieldPath": rule[2]} if len(rule) > 2 else {})}
                              for rule in rules]
    return ConfigDict(json_schema_extra={"x-kubernetes-validations": validations})
