"""The one reconcile of a TrainingJob or TuneSweep: the only writer of its status.

Level-triggered, like KubeRay's controllers: whatever enqueued it (the resource changed, its
RayJob or a pod moved, MLflow showed progress, a resync timer), it reads the current state of
everything (the watch cache, the API server where the cache cannot know), brings the RayJob to
what the spec asks, and computes the whole status from what it saw. It writes the status only
when it changed, with the resourceVersion it read as the precondition.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from raylight.api import ManifestError, TrainingJobStatus, TuneSweepStatus, parse_resource
from raylight.api.manifest import Resource

from . import metrics
from .builder import (
    QUEUE_LABEL,
    RUN_HASH_ANNOTATION,
    BuildError,
    OperatorSettings,
    build_rayjob,
    kueue_queue,
    tracking_uri,
)
from .cache import Key, ObjectCache
from .events import EventRecorder
from .kube import Kube, api_message, refused_by_schema
from .progress import ProgressPoller, ProgressTarget
from .state import (
    REFUSAL_REASONS,
    STUCK_AFTER_S,
    TERMINAL_PHASES,
    Observation,
    Observed,
    compute_status,
    creating_since,
    find_condition,
    invalid_status,
    observe_rayjob,
    parse_time,
    refused_pods_source,
    status_patch,
    transition,
)
from .workqueue import Outcome

log = logging.getLogger("raylight.operator")

# The annotation that tells whether the RayJob on the server is what we would apply now.
APPLIED_HASH_ANNOTATION = "raylight.dev/applied-hash"
# On a RayJob created again after it was deleted mid-run: why, said while it starts.
RECREATED_ANNOTATION = "raylight.dev/recreated"
STATUS_MODELS: dict[str, type[TrainingJobStatus] | type[TuneSweepStatus]] = {
    "TrainingJob": TrainingJobStatus, "TuneSweep": TuneSweepStatus,
}
# Resyncs: a live run is looked at again every so often even when nothing is heard (a missed
# event, a pod stuck without a new one); a finished one rarely.
ACTIVE_RESYNC_S = 60.0
IDLE_RESYNC_S = 600.0
SPEC_CHANGE_RETRY_S = 30.0
CONFLICT_RETRY_S = 1.0
REFUSED_RETRY_S = 30.0
STUCK_RECHECK_S = 20.0  # while a pod is stuck being created: the kubelet's newest word on it


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _resource(body: dict[str, Any]) -> Resource:
    """The typed resource (the API server already applied the schema's defaults)."""
    metadata = {k: body["metadata"].get(k) for k in ("name", "namespace", "uid", "generation", "labels",
                                                     "annotations") if body["metadata"].get(k) is not None}
    return parse_resource({"apiVersion": body["apiVersion"], "kind": body["kind"], "metadata": metadata,
                           "spec": dict(body.get("spec") or {})})


def applied_hash(rayjob: dict[str, Any]) -> str:
    """Digest of everything we apply: equal on the server means nothing to apply."""
    text = json.dumps(rayjob, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Plan:
    """What reconciling the RayJob came to."""

    rayjob: dict[str, Any] | None
    """The RayJob as it now stands (None: there is none)."""
    note: Observed | None = None
    """What the operator is doing, when the RayJob's own status does not say it."""
    spec_observed: bool = True
    requeue_after: float | None = None
    created: bool = False
    """The RayJob of a new resource was just created: its status can wait for the RayJob's
    event, which requeues the key behind other new resources (RayJobs first in a burst)."""


class Reconciler:
    def __init__(self, kube: Kube, cache: ObjectCache, settings: OperatorSettings, poller: ProgressPoller,
                 events: EventRecorder) -> None:
        self.kube, self.cache, self.settings, self.poller, self.events = kube, cache, settings, poller, events

    def __call__(self, key: Hashable) -> Outcome:
        assert isinstance(key, tuple)
        body = self.cache.resource(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self.poller.forget(key)  # deleted: the garbage collector removes what it owned
            return Outcome()
        kind = key[0]
        metrics.RECONCILES.labels(kind=kind).inc()
        try:
            resource = _resource(body)
            rayjob = build_rayjob(resource, self.settings)
        except ManifestError as exc:
            first = exc.errors[0]
            text = "; ".join(str(e) for e in exc.errors) if len(exc.errors) > 1 else f"{first.path}: {first.message}"
            return self._reject(body, text)
        except BuildError as exc:
            return self._reject(body, f"{exc.path}: {exc.message}")
        stamp_applied_hash(rayjob)
        try:
            try:
                plan = self._reconcile_rayjob(body, rayjob)
            except ApiException as exc:
                if refused_by_schema(exc):
                    return self._reject(body, f"spec.cluster: KubeRay's RayJob refuses it: {api_message(exc)}")
                if exc.status not in (400, 403, 422):
                    raise
                # Refused for a reason that is not the spec (an admission webhook, a policy, our own
                # RBAC): say so, and try again later; the user's spec is not at fault.
                note = Observed("Pending", "RayJobRefused",
                                f"the API server refused RayJob {rayjob['metadata']['name']}: {api_message(exc)}")
                plan = Plan(self.cache.rayjob(key), note, requeue_after=REFUSED_RETRY_S)
            if plan.created:
                return Outcome(ACTIVE_RESYNC_S)  # the RayJob's ADDED event brings the status write
            return self._write_status(key, body, resource, rayjob, plan)
        except ApiException as exc:
            if exc.status == 404:
                return Outcome()  # the resource (or its namespace) is gone: its DELETED event follows
            if exc.status == 409:
                # The resource moved on since the cache saw it: its watch event brings it back
                # with the new version; this is only a fallback.
                return Outcome(CONFLICT_RETRY_S)
            raise

    def _reconcile_rayjob(self, body: dict[str, Any], rayjob: dict[str, Any]) -> Plan:
        """Bring the RayJob to the spec; the RayJob as it now stands, and what we did about it."""
        meta, status = body["metadata"], body.get("status") or {}
        namespace, name = rayjob["metadata"]["namespace"], rayjob["metadata"]["name"]
        digest = rayjob["metadata"]["annotations"][RUN_HASH_ANNOTATION]
        key = (body["kind"], meta["namespace"], meta["name"])
        existing = self.cache.rayjob(key)
        if (existing is None or existing["metadata"].get("name") != name) and status.get("rayJobName"):
            # The cache may not have seen it yet. A resource never applied has none to see: an
            # apply creates it (and would be a no-op on one that exists), which spares a burst
            # of new resources one request each.
            existing = self.kube.get_rayjob(namespace, name)
        same_run = status.get("runHash") == digest
        if existing is None and same_run and status.get("phase") in TERMINAL_PHASES:
            # This run ended and its RayJob was deleted since (KubeRay's TTL removes only the Ray
            # cluster; someone deleted it by hand): never run it again.
            return Plan(None)
        if existing is None and same_run and status.get("rayJobName") == name:
            # Deleted behind our back while its run was active: the run goes on, on a new RayJob
            # (it resumes from its checkpoints). The RayJob carries why, for as long as it starts.
            message = (f"RayJob {name} was deleted while the run was {status.get('phase', 'Pending')}; "
                       "created it again: the run resumes from its last checkpoint")
            rayjob["metadata"]["annotations"][RECREATED_ANNOTATION] = message
            self._event(body, "Warning", "RayJobRecreated", message)
        if existing is not None and (existing["metadata"].get("annotations") or {}).get(RUN_HASH_ANNOTATION) != digest:
            if observe_rayjob(existing).phase not in (*TERMINAL_PHASES, "Suspended"):
                # A new spec while the run is active: it takes effect when this run ends.
                return Plan(existing, spec_observed=False, requeue_after=SPEC_CHANGE_RETRY_S)
            # A new run after a finished or suspended one: KubeRay does not restart a RayJob.
            self.kube.delete_rayjob(namespace, name)
            return Plan(None, Observed("Pending", "ReplacingRayJob", f"deleting RayJob {name} of the previous run"),
                        requeue_after=2.0)
        if _leave_suspend_to_kueue(body, existing):
            del rayjob["spec"]["suspend"]
            stamp_applied_hash(rayjob)
        wanted = rayjob["metadata"]["annotations"][APPLIED_HASH_ANNOTATION]
        if existing is not None and (existing["metadata"].get("annotations") or {}).get(
                APPLIED_HASH_ANNOTATION) == wanted:
            return Plan(existing, _recreated_note(existing))
        # One object, the trainer's manifest in it: refused by its schema (a malformed volume
        # passed through), nothing is left behind.
        self.kube.apply_rayjob(rayjob)
        log.info("applied RayJob %s/%s (%s)", namespace, name, "created" if existing is None else "changed")
        if existing is None:  # created: no status from KubeRay yet
            return Plan(rayjob, _recreated_note(rayjob), created=status.get("rayJobName") is None)
        # KubeRay's last status under the spec just applied (a suspend flag may have flipped;
        # under Kueue the flag is Kueue's and stays as it was).
        suspend = rayjob["spec"].get("suspend", existing["spec"].get("suspend", False))
        kept = {**existing, "spec": {**existing["spec"], "suspend": suspend}}
        return Plan(kept, _recreated_note(kept))

    def _write_status(self, key: Key, body: dict[str, Any], resource: Resource, rayjob: dict[str, Any],
                      plan: Plan) -> Outcome:
        meta, current = body["metadata"], dict(body.get("status") or {})
        # While a new spec waits for the active run to end, the status still describes that run.
        describes = rayjob if plan.spec_observed or plan.rayjob is None else plan.rayjob
        digest = describes["metadata"]["annotations"][RUN_HASH_ANNOTATION]
        progress = self.poller.state(key)
        if progress is not None and progress.run_hash != digest:
            progress = None
        pods, recheck = self._explain_stuck(key, self.cache.pods(key))
        refusal = None
        if plan.rayjob is not None and (source := refused_pods_source(plan.rayjob, pods)) is not None:
            refusal = self._explain_refused(key, plan.rayjob, source)
            recheck = STUCK_RECHECK_S if recheck is None else min(recheck, STUCK_RECHECK_S)
        seen = Observation(
            generation=meta.get("generation"), rayjob_name=rayjob["metadata"]["name"], run_hash=digest,
            rayjob=plan.rayjob, pods=pods, refusal=refusal, note=plan.note, spec_observed=plan.spec_observed,
            queue=None if resource.spec.suspend else kueue_queue(resource),
            progress=progress.fields if progress else None, tracking_error=progress.error if progress else None,
        )
        desired = STATUS_MODELS[key[0]].model_validate(compute_status(current, seen, _now())).wire()
        self._track_progress(key, resource, digest, current, desired)
        self._apply_status(body, current, desired)
        # The gauge follows the status as written (or found right), not as the watch brings it
        # back: that can be seconds later, after older events that would take it back.
        metrics.set_phase(key, desired["phase"])
        after = IDLE_RESYNC_S if desired["phase"] in TERMINAL_PHASES else ACTIVE_RESYNC_S
        if plan.requeue_after is not None:
            after = plan.requeue_after
        return Outcome(min(after, recheck) if recheck is not None else after)

    def _explain_stuck(self, key: Key, pods: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], float | None]:
        """A pod stuck being created says why only in the kubelet's Events: read the newest Warning
        of the first such pod (one request, and only while one is stuck). Also when to look again:
        when the youngest such pod has waited long enough to count as stuck, or a while later."""
        now = datetime.datetime.now(datetime.UTC)
        recheck: float | None = None
        for pod in sorted(pods, key=lambda p: str(p["metadata"].get("name"))):
            since = creating_since(pod)
            if since is None:
                continue
            waited = (now - since).total_seconds()
            if waited < STUCK_AFTER_S:
                stuck_in = STUCK_AFTER_S - waited + 1
                recheck = stuck_in if recheck is None else min(recheck, stuck_in)
                continue
            try:
                warning = self.kube.latest_warning(key[1], str(pod["metadata"].get("uid")))
            except (ApiException, HTTPError) as exc:  # only an explanation: the status is right without it
                log.warning("could not read the Events of pod %s: %s", pod["metadata"].get("name"),
                            api_message(exc) if isinstance(exc, ApiException) else exc)
                warning = None
            if warning is not None:
                pod["status"]["warning"] = {"reason": warning[0], "message": warning[1]}
            return pods, STUCK_RECHECK_S
        return pods, recheck

    def _explain_refused(self, key: Key, rayjob: dict[str, Any], source: tuple[str, str]) -> Observed | None:
        """Why a pod the run needs by now does not exist, when admission refused it: KubeRay and the
        Job controller retry in silence, saying why only in Events on `source` (one request, only
        while a pod is missing; the caller looks again every STUCK_RECHECK_S: a refusal shows
        within a minute)."""
        created = rayjob["metadata"].get("creationTimestamp")
        if not created:
            return None
        kind, name = source
        since = parse_time(str(created))
        try:
            warning = self.kube.latest_warning_about(key[1], kind, name, REFUSAL_REASONS[kind], since)
        except (ApiException, HTTPError) as exc:  # only an explanation: the status is right without it
            log.warning("could not read the Events of %s %s: %s", kind, name,
                        api_message(exc) if isinstance(exc, ApiException) else exc)
            return None
        if warning is None:
            return None
        return Observed("Pending", "PodsRefused", f"{kind} {name}: {warning[1]}")

    def _track_progress(self, key: Key, resource: Resource, digest: str, current: dict[str, Any],
                        desired: dict[str, Any]) -> None:
        """MLflow is read while the run trains, and once more as it ends (its last results)."""
        phase = desired["phase"]
        if phase == "Running" or (phase in TERMINAL_PHASES and current.get("phase") == "Running"):
            target = ProgressTarget(resource, tracking_uri(resource, self.settings), digest,
                                    desired.get("mlflow") or None, final=phase in TERMINAL_PHASES)
            self.poller.track(key, target)
        elif phase not in TERMINAL_PHASES:
            self.poller.track(key, None)

    def _apply_status(self, body: dict[str, Any], current: dict[str, Any], desired: dict[str, Any]) -> None:
        patch = status_patch(current, desired)
        if not patch:
            return
        self._patch_status(body, patch)
        moved = transition(current.get("phase"), desired)
        if moved:
            self._event(body, *moved)
        was, now = find_condition(current, "PodsHealthy"), find_condition(desired, "PodsHealthy")
        if now and now["status"] == "False" and (not was or was.get("reason") != now.get("reason")):
            self._event(body, "Warning", now["reason"], now["message"])

    def _reject(self, body: dict[str, Any], message: str) -> Outcome:
        """A spec that can never work: phase Failed, a condition that names the field, no objects.

        No retry: only a new spec (a watch event) changes the answer."""
        meta, current = body["metadata"], dict(body.get("status") or {})
        desired = STATUS_MODELS[body["kind"]].model_validate(
            invalid_status(current, meta.get("generation"), message, _now())).wire()
        patch = status_patch(current, desired)
        if patch:
            self._patch_status(body, patch)
            self._event(body, "Warning", "InvalidSpec", message)
            metrics.ERRORS.labels(kind=body["kind"], reason="InvalidSpec").inc()
        metrics.set_phase((body["kind"], meta["namespace"], meta["name"]), desired["phase"])
        return Outcome()

    def _patch_status(self, body: dict[str, Any], patch: dict[str, Any]) -> None:
        meta = body["metadata"]
        written = self.kube.patch_status(body["kind"], meta["namespace"], meta["name"], meta.get("resourceVersion"),
                                         patch)
        self.cache.wrote_status((body["kind"], meta["namespace"], meta["name"]), written)

    def _event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.record(body, type_, reason, message)


def stamp_applied_hash(rayjob: dict[str, Any]) -> None:
    annotations = rayjob["metadata"]["annotations"]
    annotations.pop(APPLIED_HASH_ANNOTATION, None)
    annotations[APPLIED_HASH_ANNOTATION] = applied_hash(rayjob)


def _leave_suspend_to_kueue(body: dict[str, Any], existing: dict[str, Any] | None) -> bool:
    """Whether to apply the RayJob without spec.suspend: a queued run that Kueue admitted (it set
    suspend false, and so owns the field). Until then we apply suspend true ourselves: a field only
    we applied would be removed (false: running unadmitted) by an apply that left it out, as after
    the user suspends and resumes a queued run. Kueue suspending it again (preemption) takes us back."""
    queued = QUEUE_LABEL in ((body["metadata"].get("labels")) or {})
    user_suspended = bool((body.get("spec") or {}).get("suspend"))
    return queued and not user_suspended and existing is not None and not existing["spec"].get("suspend", False)


def _recreated_note(rayjob: dict[str, Any]) -> Observed | None:
    message = (rayjob["metadata"].get("annotations") or {}).get(RECREATED_ANNOTATION)
    if message and observe_rayjob(rayjob).reason == "ClusterStarting":
        return Observed("Pending", "RayJobRecreated", message)
    return None

