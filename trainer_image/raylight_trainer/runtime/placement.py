"""Where this run executes: in a RayJob's cluster, or on this machine (imports nothing heavy: the
driver, the summaries and the attributions all ask before torch is loaded)."""

from __future__ import annotations

import os

from raylight.api.pods import RUN_BY_OPERATOR_ENV


def ray_cluster_address() -> str | None:
    """The Ray cluster this process belongs to: KubeRay sets RAY_ADDRESS in a RayJob's pods (the
    driver joins that cluster); None for a local run, which starts its own Ray."""
    return os.environ.get("RAY_ADDRESS") or None


def run_by_operator() -> bool:
    """True in the Ray pods of a TrainingJob or TuneSweep (every process: driver, trials, workers),
    whose settings come from the resource's spec.cluster; False for `raylight run`."""
    return os.environ.get(RUN_BY_OPERATOR_ENV) == "true"


def setting(spec_field: str, option: str) -> str:
    """What a user sets to change something, for error messages: the spec's field or the option."""
    return spec_field if run_by_operator() else option


def storage_field() -> str:
    return setting("spec.cluster.storagePath", "--storage-path")
