"""A run's directory and the state file in it: which spec and resource it holds, which MLflow run,
whether it finished; an interrupted run of the same spec resumes from it, anything else starts over."""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..runtime.storage import Storage


@dataclass
class RunSettings:
    """Where a run keeps its state: MLflow, Ray storage (checkpoints, Tune state), datasets."""

    tracking_uri: str
    storage: Storage
    data_dir: str | None = None
    artifact_root: Path | None = None  # set for local (file/SQLite) MLflow stores


STATE_FILE = "raylight-state.json"


# Fields that say where and whether a run goes, not what it trains: changing them resumes.
_PLACEMENT_FIELDS = {"cluster", "suspend"}


def spec_hash(spec: BaseModel) -> str:
    # Defaults left out: a release that adds a field must not restart interrupted runs.
    trained = spec.model_dump(mode="json", exclude=_PLACEMENT_FIELDS, exclude_defaults=True)
    return hashlib.sha256(json.dumps(trained, sort_keys=True).encode()).hexdigest()[:16]


def claim_run_dir(run_dir: Storage, digest: str, fresh: bool, uid: str | None = None) -> dict[str, Any]:
    """The saved state of an interrupted run of the same spec, to resume; else {}.

    A finished run, a changed spec, another resource of the same name (a deleted and re-created
    one: its uid differs, and the operator finds runs by uid) or `fresh` starts over: earlier
    results are moved aside (kept, never mixed with the new run's).
    """
    state = saved_state(run_dir)
    same_resource = uid is None or state.get("uid") in (None, uid)
    if state.get("spec_hash") == digest and not state.get("finished") and not fresh and same_resource:
        return state
    run_dir.move_aside()
    return {}


def saved_state(run_dir: Storage) -> dict[str, Any]:
    """The run directory's state file ({} where there is none yet)."""
    text = (run_dir / STATE_FILE).read_text()
    return dict(json.loads(text)) if text else {}


def save_state(run_dir: Storage, **values: Any) -> None:
    (run_dir / STATE_FILE).write_text(json.dumps({**saved_state(run_dir), **values}))


def local_dir(storage: Storage) -> Path:
    """A local directory for what must stay on a disk (W&B's files): the storage's own directory, or
    for an object store one under the system's temporary directory named after the run."""
    local = storage.local_path()
    if local is not None:
        return local
    return Path(tempfile.gettempdir()) / "raylight" / storage.path
