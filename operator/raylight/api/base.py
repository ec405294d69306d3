"""Base model for every spec: camelCase on the wire (as Kubernetes), snake_case in Python."""

from __future__ import annotations

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


def server_rules(*rules: tuple[str, str]) -> ConfigDict:
    """A model_config carrying CEL rules (rule, message) that the API server checks too."""
    return ConfigDict(json_schema_extra={"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]})
