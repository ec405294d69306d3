"""Read TrainingJob / TuneSweep manifests and report every error with its field path."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .base import API_VERSION, GROUP, FieldProblem
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
        return f"{where}{self.path}: {self.message}" if self.path else f"{where}{self.message}"


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


def _fields(model: type[BaseModel]) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items()}


# A field of the other kind's spec: say where it belongs, not "check its spelling".
_SWEEP_ONLY = _fields(TuneSweepSpec) - _fields(TrainingJobSpec)
_TRIAL_FIELDS = _fields(TrainingJobSpec) - _fields(TuneSweepSpec)


def _message(error: Any, kind: str) -> str:
    msg = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        loc = error["loc"]
        if len(loc) == 2 and loc[0] == "spec" and kind == "TrainingJob" and loc[1] in _SWEEP_ONLY:
            return ("a TuneSweep field: a TrainingJob trains one configuration; to search, use kind: TuneSweep "
                    "and put this job's spec under spec.trial")
        if len(loc) == 2 and loc[0] == "spec" and kind == "TuneSweep" and loc[1] in _TRIAL_FIELDS:
            return f"belongs under spec.trial in a TuneSweep (spec.trial.{loc[1]}): every trial trains with it"
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
    resource, field_errors, stand_in = _validate(KINDS[kind], doc, kind, source)
    errors.extend(field_errors)
    checked = resource or stand_in
    if isinstance(checked, TuneSweep):
        # The search space is checked against the spec even when other fields are wrong (against
        # the spec without them), so that one round shows every error.
        errors.extend(SpecError(p, m, source) for p, m in search_space_errors(checked.spec)
                      if resource is not None or p not in {e.path for e in errors})
    if errors or resource is None:
        raise ManifestError(errors)
    return resource


def _validate(model: type[TrainingJob] | type[TuneSweep], doc: dict[str, Any], kind: str,
              source: str) -> tuple[Resource | None, list[SpecError], Resource | None]:
    """The resource, or every error pydantic finds, and a stand-in: the resource without the
    wrong fields (None when even that fails), for the checks that need a parsed spec.

    A model's own cross-field checks run only when its fields are valid, so a typo would hide
    them until fixed: a second pass without the unknown fields reports those too, in one round.
    Wrong values are not dropped for that (a cross-field message about a default the user never
    wrote would mislead)."""
    errors: list[SpecError] = []
    current = doc
    for _ in range(2):
        try:
            return model.model_validate(current), errors, None
        except ValidationError as exc:
            found = exc.errors()
        known = {(e.path, e.message) for e in errors}
        for err in found:
            path, message = _loc_to_path(err["loc"]), _message(err, kind)
            problem = (err.get("ctx") or {}).get("error")
            if isinstance(problem, FieldProblem):
                path, message = f"{path}.{problem.path}", str(problem)
            if path != "apiVersion" and (path, message) not in known:
                errors.append(SpecError(path, message, source))
        unknown = [err["loc"] for err in found if err["type"] == "extra_forbidden"]
        if not unknown:
            break
        current = _without(current, unknown)
    try:
        stand_in = model.model_validate(_without(current, [err["loc"] for err in found]))
    except ValidationError:
        stand_in = None
    return None, errors, stand_in


def _without(doc: Any, locs: list[tuple[int | str, ...]]) -> Any:
    """A copy of doc without the values at these locations."""
    kept = copy.deepcopy(doc)
    for loc in locs:
        parent = kept
        try:
            for item in loc[:-1]:
                parent = parent[item]
            del parent[loc[-1]]
        except (KeyError, IndexError, TypeError):
            continue
    return kept


def _is_raylight(doc: Any) -> bool:
    """A document meant for us: our API group, one of our kinds, or no apiVersion at all (an error
    to report, not another tool's object to skip)."""
    if not isinstance(doc, dict):
        return True
    api_version = doc.get("apiVersion")
    return api_version is None or str(api_version).split("/")[0] == GROUP or doc.get("kind") in KINDS


def read_manifests(path: str | Path) -> tuple[list[Resource], list[str]]:
    """Every TrainingJob / TuneSweep in a YAML file, all errors of all documents at once, and a
    note for each other object (a PVC, a Secret, a Kustomization) that the file holds: those
    are kubectl's business, skipped here."""
    file = Path(path)
    if not file.is_file():
        raise ManifestError([SpecError("", f"{file} does not exist or is not a file")])
    try:
        docs = [d for d in yaml.safe_load_all(file.read_text()) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(file)
        problem = " ".join(str(p) for p in (getattr(exc, "context", None), getattr(exc, "problem", None)) if p)
        raise ManifestError([SpecError("", f"not valid YAML: {problem or exc}", where)]) from exc
    if not docs:
        raise ManifestError([SpecError("", f"{file} holds no manifest")])
    resources: list[Resource] = []
    errors: list[SpecError] = []
    notes: list[str] = []
    for index, doc in enumerate(docs):
        source = f"{file}" if len(docs) == 1 else f"{file}[{index}]"
        if not _is_raylight(doc):
            name = (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"), dict) else None
            notes.append(f"{source}: {doc.get('kind') or 'a document'}{' ' + name if name else ''} "
                         f"({doc.get('apiVersion')}) is not a Raylight resource: left to kubectl")
            continue
        try:
            resources.append(parse_resource(doc, source))
        except ManifestError as exc:
            errors.extend(exc.errors)
    if errors:
        raise ManifestError(errors)
    return resources, notes


def no_resource_error(path: str | Path, notes: list[str]) -> ManifestError:
    """For a file that holds none of our resources (only the objects the notes name)."""
    return ManifestError([SpecError("", f"{path} holds no TrainingJob or TuneSweep"
                                        + (f" ({'; '.join(notes)})" if notes else ""))])


def load_manifests(path: str | Path) -> list[Resource]:
    """Every TrainingJob / TuneSweep in a YAML file (other objects skipped); at least one."""
    resources, notes = read_manifests(path)
    if not resources:
        raise no_resource_error(path, notes)
    return resources
