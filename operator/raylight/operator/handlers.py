"""kopf handlers: validate, build, apply, and write status only when it changed.

- A TrainingJob or TuneSweep (created, changed, or found at start-up) is validated, built into a
  ConfigMap (its manifest) and a RayJob, and both are applied server-side.
- A RayJob's status (KubeRay writes it) drives the owner's phase and conditions, with an Event
  on each transition.
- While a run is Running, a timer reads its progress back from MLflow.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException

from raylight.api import GROUP, VERSION, ManifestError, parse_resource
from raylight.api.manifest import Resource

from . import metrics
from .builder import (
    LABEL_KIND,
    LABEL_NAME,
    MANAGED_BY,
    RUN_HASH_ANNOTATION,
    BuildError,
    OperatorSettings,
    build_configmap,
    build_rayjob,
    run_hash,
    tracking_uri,
)
from .kube import PLURALS, Kube, api_message, refused_by_schema
from .progress import ProgressError, read_progress
from .state import (
    TERMINAL_PHASES,
    Observed,
    observe_rayjob,
    phase_conditions,
    set_condition,
    status_for_rayjob,
    transition,
)

PROGRESS_INTERVAL_S = float(os.environ.get("RAYLIGHT_PROGRESS_INTERVAL", "30"))
_PROGRESS_FIELDS = ("epoch", "metric", "trials", "progress", "bestTrial", "mlflow")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _resource(body: Mapping[str, Any]) -> Resource:
    """The typed resource (the API server already applied the schema's defaults)."""
    doc = {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "metadata": {k: body["metadata"].get(k) for k in ("name", "namespace", "uid", "generation", "labels",
                                                            "annotations") if body["metadata"].get(k) is not None},
        "spec": dict(body.get("spec") or {}),
    }
    return parse_resource(doc)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Progress and the diff base live in our own annotations, not in status.kopf (the structural
    # schema would prune it) nor under kopf's default prefix.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration",
    )
    settings.posting.level = logging.WARNING  # Events: our transitions and real failures only
    # The resources and namespaces are known at start: no watching of CRDs and namespaces, so
    # no RBAC for them (install the CRDs before the operator, as the Helm chart does).
    settings.scanning.disabled = True
    workers = int(os.environ.get("RAYLIGHT_WORKERS", "16"))
    settings.execution.max_workers = workers
    settings.batching.error_delays = [1, 2, 5, 10, 30, 60]
    if not hasattr(memo, "settings"):
        memo.settings = OperatorSettings()
    memo.kube = Kube(pool_size=workers * 2)
    if getattr(memo, "metrics_port", None):
        metrics.serve(memo.metrics_port)


def _reject(body: kopf.Body, kube: Kube, path: str, message: str) -> None:
    """A spec that can never work: phase Failed, a condition that names the field, no objects."""
    text = f"{path}: {message}"

    def failed(current: dict[str, Any]) -> dict[str, Any]:
        now = _now()
        conditions = set_condition(current.get("conditions") or [], "SpecValid", False, "InvalidSpec", text, now)
        conditions = phase_conditions(conditions, Observed("Failed", "InvalidSpec", text), now)
        update = {"phase": "Failed", "conditions": conditions, "observedGeneration": body["metadata"].get("generation")}
        return {k: v for k, v in update.items() if current.get(k) != v}

    kube.update_status(body["kind"], body["metadata"]["namespace"], body["metadata"]["name"], failed)
    kopf.event(body, type="Warning", reason="InvalidSpec", message=text)
    metrics.ERRORS.labels(kind=body["kind"], reason="InvalidSpec").inc()
    raise kopf.PermanentError(text)


def reconcile(body: kopf.Body, status: kopf.Status, memo: kopf.Memo, **_: Any) -> None:
    kind = body["kind"]
    kube: Kube = memo.kube
    metrics.RECONCILES.labels(kind=kind).inc()
    try:
        resource = _resource(body)
        configmap = build_configmap(resource, memo.settings)
        rayjob = build_rayjob(resource, memo.settings)
    except ManifestError as exc:
        first = exc.errors[0]
        _reject(body, kube, first.path, "; ".join(str(e) for e in exc.errors) if len(exc.errors) > 1
                else first.message)
        return
    except BuildError as exc:
        _reject(body, kube, exc.path, exc.message)
        return
    meta = resource.metadata
    name, digest = rayjob["metadata"]["name"], run_hash(resource)
    existing = kube.get_rayjob(meta.namespace, name)
    phase = status.get("phase")
    if existing is None and phase in TERMINAL_PHASES and status.get("runHash") == digest:
        # This run finished and its RayJob was deleted (by hand: KubeRay's TTL removes only the
        # Ray cluster): never run it again.
        kube.update_status(kind, meta.namespace, meta.name, lambda current: {"observedGeneration": meta.generation}
                           if current.get("observedGeneration") != meta.generation else {})
        return
    if existing is not None and existing["metadata"].get("annotations", {}).get(RUN_HASH_ANNOTATION) != digest:
        if observe_rayjob(existing).phase not in (*TERMINAL_PHASES, "Suspended"):
            raise kopf.TemporaryError("the spec changed while the run is active; waiting for it to end", delay=30)
        # A new run of a finished or suspended one: KubeRay does not restart a RayJob, replace it.
        kube.delete_rayjob(meta.namespace, name)
        raise kopf.TemporaryError(f"replacing RayJob {name} of the previous run", delay=2)
    # The RayJob first: when its schema refuses what we passed through (a malformed volume, say),
    # nothing is left behind. Its head pod waits for the ConfigMap's volume until it exists.
    try:
        kube.apply_rayjob(rayjob)
    except ApiException as exc:
        if refused_by_schema(exc):
            _reject(body, kube, "spec.cluster", f"KubeRay's RayJob refuses it: {api_message(exc)}")
        raise
    kube.apply_configmap(configmap)

    # What the RayJob says now: its last status (a restarted operator may have missed it) under
    # the spec just applied (a suspend flag may have flipped); a new RayJob has no status yet.
    known = {**(existing or {}), "spec": rayjob["spec"]}

    def applied(current: dict[str, Any]) -> dict[str, Any]:
        now = _now()
        conditions = set_condition(current.get("conditions") or [], "SpecValid", True, "Valid",
                                   "the spec is valid", now)
        update: dict[str, Any] = {"observedGeneration": meta.generation, "rayJobName": name, "runHash": digest}
        base = {**current, "conditions": conditions}
        if current.get("runHash") not in (None, digest):  # a new run: forget the last one's results
            base = {"conditions": conditions}
            update.update(startTime=None, completionTime=None, **{field: None for field in _PROGRESS_FIELDS})
        update.update({"conditions": conditions, **status_for_rayjob(base, known, now)})
        return {k: v for k, v in update.items() if current.get(k) != v}

    current, update = kube.update_status(kind, meta.namespace, meta.name, applied)
    _announce(body, current.get("phase"), update)


for _plural in PLURALS.values():
    kopf.on.resume(GROUP, VERSION, _plural)(reconcile)
    kopf.on.create(GROUP, VERSION, _plural)(reconcile)
    kopf.on.update(GROUP, VERSION, _plural)(reconcile)


def _owner_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, dict[str, Any]]:
    """The current object of each of our resources, so a RayJob event needs no API read.

    Only what the handlers read: not managedFields nor the annotations (kubectl's last-applied
    configuration, kopf's diff base), which are most of an object's size."""
    metadata = body["metadata"]
    kept = {k: metadata[k] for k in ("name", "namespace", "uid", "generation", "labels") if k in metadata}
    essence = {"apiVersion": body["apiVersion"], "kind": body["kind"], "metadata": kept, "spec": dict(body["spec"])}
    return {(namespace, name): {"body": essence, "status": dict(body.get("status") or {})}}


kopf.index(GROUP, VERSION, "trainingjobs", id="trainingjobs")(_owner_index)
kopf.index(GROUP, VERSION, "tunesweeps", id="tunesweeps")(_owner_index)


@kopf.on.event("ray.io", "v1", "rayjobs", labels={"app.kubernetes.io/managed-by": MANAGED_BY})
def rayjob_event(body: kopf.Body, type: str, memo: kopf.Memo, logger: kopf.Logger, **indices: Any) -> None:
    if type == "DELETED":
        return  # deleted by hand after the run ended: the owner keeps its final status
    labels = body["metadata"].get("labels") or {}
    kind, name, namespace = labels.get(LABEL_KIND), labels.get(LABEL_NAME), body["metadata"]["namespace"]
    index = indices.get(PLURALS.get(str(kind), ""))  # kopf passes each index by its id
    if index is None or (namespace, name) not in index:
        return
    owner = next(iter(index[(namespace, name)]))
    owner_body = owner["body"]
    run = (body["metadata"].get("annotations") or {}).get(RUN_HASH_ANNOTATION)
    rayjob = dict(body)

    def observed(current: dict[str, Any]) -> dict[str, Any]:
        if current.get("runHash") and run != current["runHash"]:
            return {}  # the RayJob of a previous run, on its way out
        return status_for_rayjob(current, rayjob, _now())

    def observed_and_final(current: dict[str, Any]) -> dict[str, Any]:
        update = observed(current)
        if update.get("phase") in TERMINAL_PHASES:
            update.update(_final_progress(owner_body, current, memo, logger))
        return update

    # The cached owner answers "anything new?" without an API call; the write reads it fresh.
    if not observed(owner["status"]):
        return
    current, update = memo.kube.update_status(str(kind), namespace, str(name), observed_and_final)
    _announce(owner_body, current.get("phase"), update)


def _announce(body: Mapping[str, Any], previous_phase: str | None, update: dict[str, Any]) -> None:
    """A Kubernetes Event on the resource when its phase moved."""
    moved = transition(previous_phase, update)
    if moved:
        event_type, reason, message = moved
        kopf.event(kopf.Body(cast(kopf.RawBody, dict(body))), type=event_type, reason=reason, message=message)


def _final_progress(owner_body: dict[str, Any], current: dict[str, Any], memo: kopf.Memo,
                    logger: kopf.Logger) -> dict[str, Any]:
    """The run's last results, read once more as it ends (the timer may not run again)."""
    try:
        resource = _resource(owner_body)
        progress = read_progress(resource, tracking_uri(resource, memo.settings))
    except (ManifestError, BuildError, ProgressError) as exc:
        logger.info("no final progress for %s: %s", owner_body["metadata"]["name"], exc)
        return {}
    return {k: v for k, v in progress.items() if current.get(k) != v}


def _running(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") == "Running"


def progress(body: kopf.Body, status: kopf.Status, patch: kopf.Patch, memo: kopf.Memo,
             logger: kopf.Logger, **_: Any) -> None:
    try:
        resource = _resource(body)
        found = read_progress(resource, tracking_uri(resource, memo.settings))
    except (ManifestError, BuildError) as exc:
        logger.debug("no progress: %s", exc)
        return
    except ProgressError as exc:
        logger.info("progress unavailable: %s", exc)
        return
    patch.status.update({k: v for k, v in found.items() if status.get(k) != v})


def track_phase(body: kopf.Body, type: str, **_: Any) -> None:
    key = (body["kind"], body["metadata"]["namespace"], body["metadata"]["name"])
    if type == "DELETED":
        metrics.PHASES.pop(key, None)
    else:
        metrics.PHASES[key] = (body.get("status") or {}).get("phase") or "Pending"


for _plural in PLURALS.values():
    kopf.on.event(GROUP, VERSION, _plural, id="phase-metrics")(track_phase)
    kopf.timer(GROUP, VERSION, _plural, interval=PROGRESS_INTERVAL_S, when=_running, id="progress")(progress)
