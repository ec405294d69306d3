"""Pure status logic: what a RayJob's status means for the TrainingJob or TuneSweep that owns it.

Conditions follow Kubernetes conventions: each type appears once, `lastTransitionTime` moves
only when its status flips, so `kubectl wait --for=condition=Succeeded` works.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from raylight.operator.ray_pods import LABEL_ROLE

TERMINAL_PHASES = ("Succeeded", "Failed")
CONDITION_TYPES = ("SpecValid", "Running", "Suspended", "Succeeded", "Failed", "PodsHealthy", "MlflowReachable")


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
        ended, _ = split_job_logs(detail)
        return Observed("Failed", f"Job{job.title() or 'Failed'}",
                        ended or f"the Ray job ended {job or 'without success'}")
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


# Ray's words before the driver's last log lines in a failed job's message (KubeRay copies it).
_JOB_LOGS_MARKER = ", last available logs"
# How the trainer's driver prints an error it explains (a bad storage path, a missing dataset).
_DRIVER_ERROR_PREFIX = "error "


def split_job_logs(message: str) -> tuple[str, str | None]:
    """A failed Ray job's message without its log tail (up to 20,000 characters, no condition's
    size), and the driver's own error line from that tail, if it printed one: the root cause of a
    run that failed before it opened its MLflow run, where the trainer would have written it."""
    head, marker, logs = message.partition(_JOB_LOGS_MARKER)
    if not marker:
        return message, None
    errors = [line.strip() for line in logs.splitlines() if line.strip().startswith(_DRIVER_ERROR_PREFIX)]
    return head.strip(), errors[-1].removeprefix(_DRIVER_ERROR_PREFIX)[:1024] if errors else None


def find_condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    """The condition of this type in a status (ours, or a pod's), if it has one."""
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)


def set_condition(conditions: list[dict[str, Any]], type_: str, status: bool, reason: str, message: str,
                  now: str) -> list[dict[str, Any]]:
    """A copy of `conditions` with one condition set (its transition time kept unless it flipped)."""
    value = "True" if status else "False"
    result = [dict(c) for c in conditions if c.get("type") != type_]
    previous = find_condition({"conditions": conditions}, type_)
    since = previous.get("lastTransitionTime") if previous and previous.get("status") == value else now
    result.append({"type": type_, "status": value, "reason": reason, "message": message, "lastTransitionTime": since})
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    return sorted(result, key=lambda c: order.get(c["type"], len(order)))


def phase_conditions(conditions: list[dict[str, Any]], observed: Observed, now: str) -> list[dict[str, Any]]:
    """Running / Suspended / Succeeded / Failed conditions for a phase: the current one True."""
    for type_, phase in (("Running", "Running"), ("Suspended", "Suspended"), ("Succeeded", "Succeeded"),
                         ("Failed", "Failed")):
        active = observed.phase == phase
        # Not running yet: the Running condition says why (the cluster is starting, an image
        # cannot be pulled ...), where `kubectl describe` and `kubectl wait` users look.
        explains = active or (phase == "Running" and observed.phase == "Pending")
        reason = observed.reason if explains else f"Not{phase}"
        message = observed.message if explains else ""
        conditions = set_condition(conditions, type_, active, reason, message, now)
    return conditions


def transition(previous_phase: str | None, update: dict[str, Any]) -> tuple[str, str, str] | None:
    """(event type, reason, message) when the phase moved, for a Kubernetes Event."""
    phase = update.get("phase")
    if not phase or phase == previous_phase:
        return None
    condition = next((c for c in update.get("conditions", []) if c["type"] == phase and c["status"] == "True"), None)
    message = condition["message"] if condition else ""
    kind = "Warning" if phase == "Failed" else "Normal"
    return kind, phase, f"{previous_phase or 'New'} -> {phase}" + (f": {message}" if message else "")


# Container waiting reasons that mean "this will not start by itself": the user must act.
_IMAGE_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "RegistryUnavailable")
_CONFIG_REASONS = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")
_LAST_LINE_CHARS = 300


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][-_LAST_LINE_CHARS:] if lines else ""


def _container_problem(pod: str, status: dict[str, Any], images: dict[str, str]) -> Observed | None:
    name = status.get("name", "?")
    waiting = (status.get("state") or {}).get("waiting") or {}
    reason, message = waiting.get("reason") or "", waiting.get("message") or ""
    if reason in _IMAGE_REASONS:
        image = status.get("image") or images.get(name, "?")
        return Observed("Pending", "ImagePullBackOff",
                        f"pod {pod} cannot pull image {image} ({reason}){': ' + message if message else ''}")
    if reason in _CONFIG_REASONS:
        return Observed("Pending", reason, f"pod {pod}, container {name}: {message or reason}")
    last = (status.get("lastState") or {}).get("terminated") or {}
    terminated = (status.get("state") or {}).get("terminated") or {}
    ended = last if reason == "CrashLoopBackOff" else terminated
    if reason == "CrashLoopBackOff" or ended.get("reason") == "OOMKilled":
        why = "OOMKilled" if ended.get("reason") == "OOMKilled" else "CrashLoopBackOff"
        text = f"pod {pod}, container {name} "
        text += "was killed for running out of memory" if why == "OOMKilled" else "keeps crashing"
        text += f" (exit code {ended.get('exitCode', '?')}, {status.get('restartCount', 0)} restarts)"
        line = _last_line(ended.get("message") or "")
        return Observed("Pending", why, text + (f"; last log line: {line}" if line else ""))
    return None


# A pod scheduled this long ago whose containers are still being created is stuck on something
# only the kubelet's Events tell (a Secret or ConfigMap volume that does not exist, a volume that
# does not attach, a sandbox that cannot start). A slow image pull raises no Warning, so is not one.
STUCK_AFTER_S = 15.0
_CREATING_REASONS = ("ContainerCreating", "PodInitializing")


def creating_since(pod: dict[str, Any]) -> datetime.datetime | None:
    """When a pod whose containers are still being created was scheduled (None: it is not such a pod)."""
    status = pod.get("status") or {}
    if status.get("phase") != "Pending" or pod["metadata"].get("deletionTimestamp"):
        return None
    containers = [*status.get("initContainerStatuses", []), *status.get("containerStatuses", [])]
    if not containers or not all(((c.get("state") or {}).get("waiting") or {}).get("reason") in _CREATING_REASONS
                                 for c in containers):
        return None
    scheduled = find_condition(status, "PodScheduled") or {}
    since = scheduled.get("lastTransitionTime") if scheduled.get("status") == "True" else None
    return parse_time(since) if since else None


def parse_time(stamp: str) -> datetime.datetime:
    """A Kubernetes timestamp (RFC 3339, "Z" for UTC) as an aware datetime."""
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


# Admission (Pod Security, a quota, a policy webhook) refuses a pod before it exists: KubeRay says so
# only in Warning Events on its RayCluster (head, workers) and the Job controller on the submitter Job.
REFUSAL_REASONS = {"RayCluster": ("FailedToCreateHeadPod", "FailedToCreateWorkerPod"), "Job": ("FailedCreate",)}


def refused_pods_source(rayjob: dict[str, Any], pods: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The object (kind, name) whose Warning Events say why a pod the RayJob should have by now is
    missing (None: none is missing). While KubeRay makes the cluster, the head and a worker are
    due; once the cluster is up and the job is being submitted, the submitter's pod is."""
    status = rayjob.get("status") or {}
    if (rayjob.get("spec") or {}).get("suspend"):
        return None
    roles = {(p["metadata"].get("labels") or {}).get(LABEL_ROLE) for p in pods
             if not p["metadata"].get("deletionTimestamp")}
    deployment, cluster = status.get("jobDeploymentStatus"), status.get("rayClusterName")
    if deployment == "Initializing" and cluster and not {"head", "worker"} <= roles:
        return "RayCluster", str(cluster)
    if deployment == "Running" and status.get("jobStatus") in (None, "", "PENDING") and "submitter" not in roles:
        return "Job", str(rayjob["metadata"]["name"])
    return None


def diagnose_pods(pods: list[dict[str, Any]]) -> Observed | None:
    """Why the run's pods cannot start or keep failing, in Kubernetes' words; None when nothing is wrong.

    Pods are read in name order so the same problem in several pods always names the same one."""
    for pod in sorted(pods, key=lambda p: str(p["metadata"].get("name"))):
        if pod["metadata"].get("deletionTimestamp"):
            continue
        name = str(pod["metadata"].get("name"))
        status = pod.get("status") or {}
        images = {c.get("name", ""): c.get("image", "") for c in (pod.get("spec") or {}).get("containers", [])}
        for container in [*status.get("initContainerStatuses", []), *status.get("containerStatuses", [])]:
            problem = _container_problem(name, container, images)
            if problem is not None:
                return problem
        warning = status.get("warning")  # the kubelet's, read for a pod stuck being created
        if warning:
            return Observed("Pending", str(warning["reason"]), f"pod {name} cannot start: {warning['message']}")
        scheduled = find_condition(status, "PodScheduled")
        if scheduled and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            return Observed("Pending", "Unschedulable",
                            f"pod {name} cannot be scheduled: {scheduled.get('message') or 'no node fits it'}")
        if status.get("phase") == "Failed" and status.get("reason"):
            return Observed("Pending", str(status["reason"]), f"pod {name} failed: {status.get('message') or ''}")
    return None


def waiting_for_kueue(rayjob: dict[str, Any], queue: str) -> Observed:
    """A queued run's suspended RayJob (the user did not suspend it): Kueue has not admitted it
    yet, or took the admission back (preemption) and the Ray cluster is going."""
    if ((rayjob.get("status") or {}).get("jobDeploymentStatus") or "") in ("Suspending", "Running", "Initializing"):
        return Observed("Pending", "Preempted", f"Kueue took the run's admission back: the Ray cluster stops, "
                                                f"and the run resumes when LocalQueue {queue} admits it again")
    return Observed("Pending", "Queued", f"waiting for Kueue admission in LocalQueue {queue}")


@dataclass(frozen=True)
class Observation:
    """Everything one reconcile saw, from which the whole status follows."""

    generation: int | None
    rayjob_name: str
    run_hash: str
    rayjob: dict[str, Any] | None
    """The RayJob of this run (None: not created yet)."""
    pods: list[dict[str, Any]]
    progress: dict[str, Any] | None = None
    """Status fields read from MLflow for this run (None: not read yet)."""
    tracking_error: str | None = None
    """Why MLflow could not be read at the last try (None: it could, or was not tried)."""
    queue: str | None = None
    """The Kueue LocalQueue of a run the user has not suspended: a suspended RayJob waits for Kueue."""
    refusal: Observed | None = None
    """Why admission refused a pod the run needs, in the words of KubeRay's or the Job's Events."""
    note: Observed | None = None
    """What the operator itself is doing when it is not what the RayJob says (replacing, waiting)."""
    spec_observed: bool = True
    """False while a spec change waits for the active run to end: observedGeneration stays."""


def compute_status(current: dict[str, Any], seen: Observation, now: str) -> dict[str, Any]:
    """The whole status (wire form) a resource should have, from its current status and what was seen."""
    new_run = current.get("runHash") not in (None, seen.run_hash)
    base = {"conditions": current.get("conditions") or []} if new_run else dict(current)
    status: dict[str, Any] = {k: v for k, v in base.items() if k not in ("phase",)}
    if seen.progress:
        status.update(seen.progress)
    if seen.rayjob is not None:
        observed = observe_rayjob(seen.rayjob)
    elif not new_run and current.get("phase") in TERMINAL_PHASES:
        # The run ended and its RayJob was deleted since: its record stays as it ended.
        ended = find_condition(status, current["phase"]) or {}
        observed = Observed(current["phase"], ended.get("reason", current["phase"]), ended.get("message", ""))
    else:
        observed = Observed("Pending", "Creating", "creating the RayJob")
    if observed.phase == "Suspended" and seen.queue is not None and seen.rayjob is not None:
        observed = waiting_for_kueue(seen.rayjob, seen.queue)
    trouble = (diagnose_pods(seen.pods) or seen.refusal) if observed.phase in ("Pending", "Running") else None
    if trouble is not None and observed.phase == "Pending":
        observed = trouble  # what stops the pods first: it is what the user must fix
    elif seen.note is not None:
        observed = seen.note
    if observed.phase == "Failed" and not status.get("rootCause") and seen.rayjob is not None:
        _, status["rootCause"] = split_job_logs(((seen.rayjob.get("status") or {}).get("message")) or "")
    if observed.phase == "Failed" and status.get("rootCause"):
        # KubeRay knows the job failed; the trainer knows why.
        observed = Observed("Failed", observed.reason, f"{observed.message}: {status['rootCause']}")
    conditions = set_condition(status.get("conditions") or [], "SpecValid", True, "Valid", "the spec is valid", now)
    conditions = phase_conditions(conditions, observed, now)
    if (seen.pods or trouble) and observed.phase in ("Pending", "Running"):
        if trouble is None:
            conditions = set_condition(conditions, "PodsHealthy", True, "PodsHealthy", "no pod reports a problem", now)
        else:
            conditions = set_condition(conditions, "PodsHealthy", False, trouble.reason, trouble.message, now)
    if seen.tracking_error is not None:
        conditions = set_condition(conditions, "MlflowReachable", False, "MlflowUnreachable", seen.tracking_error, now)
    elif seen.progress is not None:
        conditions = set_condition(conditions, "MlflowReachable", True, "Reachable", "progress is read from MLflow",
                                   now)
    status.update(phase=observed.phase, conditions=conditions, rayJobName=seen.rayjob_name, runHash=seen.run_hash)
    status["observedGeneration"] = seen.generation if seen.spec_observed else current.get("observedGeneration")
    rj_status = (seen.rayjob or {}).get("status") or {}
    if rj_status.get("startTime") and not status.get("startTime"):
        status["startTime"] = rj_status["startTime"]
    if observed.phase in TERMINAL_PHASES and not status.get("completionTime"):
        status["completionTime"] = rj_status.get("endTime") or now
    return {k: v for k, v in status.items() if v is not None}


def invalid_status(current: dict[str, Any], generation: int | None, message: str, now: str) -> dict[str, Any]:
    """The status of a spec that can never work: Failed, with SpecValid False naming the field."""
    conditions = set_condition(current.get("conditions") or [], "SpecValid", False, "InvalidSpec", message, now)
    conditions = phase_conditions(conditions, Observed("Failed", "InvalidSpec", message), now)
    return {**current, "phase": "Failed", "conditions": conditions, "observedGeneration": generation}


def status_patch(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch from one status to the other ({}: nothing to write)."""
    patch: dict[str, Any] = {k: v for k, v in desired.items() if current.get(k) != v}
    patch.update({k: None for k in current if k not in desired})
    return patch
