"""Read TrainingJob / TuneSweep manifests and report every error with its field path."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .base import API_VERSION
from .status import TrainingJobStatus, TuneSweepStatus
from .sweep import TuneSweepSpec, search_space_errors
from .trial import TrainingJobSpec

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Names end up in RayJob, pod and label values: keep them within a DNS label.
MAX_NAME_LENGTH = 50


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    namespace: str = "default"
    generation: int | None = None
    uid: str | None = None


class TrainingJob(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    api_version: Literal["raylight.dev/v1alpha1"] = Field(default="raylight.dev/v1alpha1", alias="apiVersion")
    kind: Literal["TrainingJob"] = "TrainingJob"
    metadata: Metadata
    spec: TrainingJobSpec = Field(default_factory=TrainingJobSpec)
    status: TrainingJobStatus | None = None


class TuneSweep(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    api_version: Literal["raylight.dev/v1alpha1"] = Field(default="raylight.dev/v1alpha1", alias="apiVersion")
    kind: Literal["TuneSweep"] = "TuneSweep"
    metadata: Metadata
    spec: TuneSweepSpec = Field(default_factory=TuneSweepSpec)
    status: TuneSweepStatus | None = None


Resource = TrainingJob | TuneSweep
KINDS: dict[str, type[TrainingJob] | type[TuneSweep]] = {"TrainingJob": TrainingJob, "TuneSweep": TuneSweep}


@dataclass(frozen=True)
class SpecError:
    """One problem in a manifest: where it is and what to do about it."""

    path: str
    message: str
    source: str = ""

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        return f"{where}{self.path}: {self.message}"


class ManifestError(Exception):
    def __init__(self, errors: list[SpecError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item.startswith(("function-", "tagged-union")):
            continue
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts) or "(document)"


def _message(error: Any) -> str:
    msg = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return "unknown field; check its spelling (fields are camelCase, see `kubectl explain`)"
    if error["type"] == "literal_error":
        return msg.replace("Input should be", "must be")
    return msg


def parse_resource(doc: Any, source: str = "") -> Resource:
    """Validate one manifest document; raise ManifestError listing every problem."""
    if not isinstance(doc, dict):
        raise ManifestError([SpecError("(document)", "a manifest must be a mapping", source)])
    errors: list[SpecError] = []
    if doc.get("apiVersion") != API_VERSION:
        errors.append(SpecError("apiVersion", f"must be {API_VERSION} (got {doc.get('apiVersion')!r})", source))
    kind = doc.get("kind")
    if kind not in KINDS:
        errors.append(SpecError("kind", f"must be TrainingJob or TuneSweep (got {kind!r})", source))
        raise ManifestError(errors)
    name = (doc.get("metadata") or {}).get("name")
    if isinstance(name, str) and (not _DNS_LABEL.match(name) or len(name) > MAX_NAME_LENGTH):
        errors.append(
            SpecError(
                "metadata.name",
                f"{name!r} must be lowercase letters, digits and '-', start and end alphanumeric, "
                f"at most {MAX_NAME_LENGTH} characters",
                source,
            )
        )
    resource: Resource | None = None
    try:
        resource = KINDS[kind].model_validate(doc)
    except ValidationError as exc:
        for err in exc.errors():
            path = _loc_to_path(err["loc"])
            if path == "apiVersion":
                continue
            errors.append(SpecError(path, _message(err), source))
    if isinstance(resource, TuneSweep):
        errors.extend(SpecError(p, m, source) for p, m in search_space_errors(resource.spec))
    if errors or resource is None:
        raise ManifestError(errors)
    return resource


def load_manifests(path: str | Path) -> list[Resource]:
    """Every TrainingJob / TuneSweep in a YAML file; all errors of all documents at once."""
    file = Path(path)
    if not file.is_file():
        raise ManifestError([SpecError("(file)", f"{file} does not exist or is not a file")])
    try:
        docs = [d for d in yaml.safe_load_all(file.read_text()) if d is not None]
    except yaml.YAMLError as exc:
        raise ManifestError([SpecError("(file)", f"{file} is not valid YAML: {exc}")]) from exc
    if not docs:
        raise ManifestError([SpecError("(file)", f"{file} holds no manifest")])
    resources: list[Resource] = []
    errors: list[SpecError] = []
    for index, doc in enumerate(docs):
        source = f"{file}" if len(docs) == 1 else f"{file}[{index}]"
        try:
            resources.append(parse_resource(doc, source))
        except ManifestError as exc:
            errors.extend(exc.errors)
    if errors:
        raise ManifestError(errors)
    return resources
