"""Pure status logic: what a RayJob's status means for the TrainingJob or TuneSweep that owns it.

Conditions follow Kubernetes conventions: each type appears once, `lastTransitionTime` moves
only when its status flips, so `kubectl wait --for=condition=Succeeded` works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TERMINAL_PHASES = ("Succeeded", "Failed")
CONDITION_TYPES = ("SpecValid", "Running", "Suspended", "Succeeded", "Failed")


@dataclass(frozen=True)
class Observed:
    """The phase a RayJob is in, and why."""

    phase: str
    reason: str
    message: str


def observe_rayjob(rayjob: dict[str, Any]) -> Observed:
    """Phase of the resource from its RayJob (KubeRay's jobDeploymentStatus and jobStatus)."""
    status = rayjob.get("status") or {}
    deployment = status.get("jobDeploymentStatus") or ""
    job = status.get("jobStatus") or ""
    detail = status.get("message") or ""
    suspended_spec = bool((rayjob.get("spec") or {}).get("suspend"))
    if deployment == "Complete":
        if job == "SUCCEEDED":
            return Observed("Succeeded", "RunSucceeded", "the run finished; results are in MLflow")
        ended = detail or f"the Ray job ended {job or 'without success'}"
        return Observed("Failed", f"Job{job.title() or 'Failed'}", ended)
    if deployment in ("Failed", "ValidationFailed"):
        reason = status.get("reason") or deployment
        return Observed("Failed", str(reason), detail or f"KubeRay reports the RayJob {deployment}")
    if suspended_spec or deployment in ("Suspending", "Suspended"):
        if deployment == "Suspended" or not suspended_spec:
            return Observed("Suspended", "Suspended", "the Ray cluster is deleted and its GPUs are free")
        return Observed("Suspended", "Suspending", "deleting the Ray cluster")
    if deployment == "Running" and job == "RUNNING":
        return Observed("Running", "Training", "the Ray job is running")
    if deployment == "Running":
        return Observed("Pending", "JobStarting", "the Ray cluster is up; the Ray job is starting")
    if deployment == "Retrying":
        return Observed("Pending", "Retrying", detail or "KubeRay retries the run on a new Ray cluster")
    return Observed("Pending", "ClusterStarting", "waiting for the Ray cluster's pods")


def set_condition(conditions: list[dict[str, Any]], type_: str, status: bool, reason: str, message: str,
                  now: str) -> list[dict[str, Any]]:
    """A copy of `conditions` with one condition set (its transition time kept unless it flipped)."""
    value = "True" if status else "False"
    result = [dict(c) for c in conditions if c.get("type") != type_]
    previous = next((c for c in conditions if c.get("type") == type_), None)
    since = previous.get("lastTransitionTime") if previous and previous.get("status") == value else now
    result.append({"type": type_, "status": value, "reason": reason, "message": message, "lastTransitionTime": since})
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    return sorted(result, key=lambda c: order.get(c["type"], len(order)))


def phase_conditions(conditions: list[dict[str, Any]], observed: Observed, now: str) -> list[dict[str, Any]]:
    """Running / Suspended / Succeeded / Failed conditions for a phase: the current one True."""
    for type_, phase in (("Running", "Running"), ("Suspended", "Suspended"), ("Succeeded", "Succeeded"),
                         ("Failed", "Failed")):
        active = observed.phase == phase
        reason = observed.reason if active else f"Not{phase}"
        message = observed.message if active else ""
        conditions = set_condition(conditions, type_, active, reason, message, now)
    return conditions


def status_for_rayjob(current: dict[str, Any], rayjob: dict[str, Any], now: str) -> dict[str, Any]:
    """The status fields a RayJob drives (phase, conditions, times); {} when nothing changed."""
    observed = observe_rayjob(rayjob)
    rj_status = rayjob.get("status") or {}
    update: dict[str, Any] = {}
    if current.get("phase") != observed.phase:
        update["phase"] = observed.phase
    conditions = phase_conditions(current.get("conditions") or [], observed, now)
    if conditions != (current.get("conditions") or []):
        update["conditions"] = conditions
    start = rj_status.get("startTime")
    if start and not current.get("startTime"):
        update["startTime"] = start
    if observed.phase in TERMINAL_PHASES:
        end = rj_status.get("endTime") or now
        if not current.get("completionTime"):
            update["completionTime"] = end
    return update


def transition(previous_phase: str | None, update: dict[str, Any]) -> tuple[str, str, str] | None:
    """(event type, reason, message) when the phase moved, for a Kubernetes Event."""
    phase = update.get("phase")
    if not phase or phase == previous_phase:
        return None
    condition = next((c for c in update.get("conditions", []) if c["type"] == phase and c["status"] == "True"), None)
    message = condition["message"] if condition else ""
    kind = "Warning" if phase == "Failed" else "Normal"
    return kind, phase, f"{previous_phase or 'New'} -> {phase}" + (f": {message}" if message else "")
