"""kopf as the watch layer: every event only updates the cache and enqueues one reconcile.

- A TrainingJob or TuneSweep (created, changed, listed at start-up) enqueues itself.
- A RayJob or a pod it caused enqueues the resource its labels name.
- The progress poller enqueues a resource when MLflow shows something new.
The reconcile (reconciler.py), run by the work queue's workers, is the only writer of status.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
from urllib3.exceptions import HTTPError

from raylight.api import GROUP, VERSION

from . import metrics
from .builder import LABEL_KIND, MANAGED_BY, OperatorSettings
from .cache import Key, ObjectCache
from .election import LeaderElector, NotLeading
from .events import EventRecorder
from .kube import PLURALS, Kube
from .progress import ProgressPoller, end_runs
from .reconciler import Reconciler
from .workqueue import WorkQueue

PROGRESS_INTERVAL_S = float(os.environ.get("RAYLIGHT_PROGRESS_INTERVAL", "30"))
_DELETED_KEPT = 1000  # a standby's memory of deleted resources (their bodies) is bounded
log = logging.getLogger("raylight.operator")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.level = logging.WARNING  # kopf's own Events: real failures only
    # The resources and namespaces are known at start: no watching of CRDs and namespaces, so
    # no RBAC for them (install the CRDs before the operator, as the Helm chart does).
    settings.scanning.disabled = True
    # A watch that hangs without closing would freeze the cache while the operator looks healthy:
    # the API server ends each watch after this long and kopf starts another (whole seconds: the API
    # server refuses timeoutSeconds=300.0); the client gives up a little later if it never does.
    watch_timeout = int(os.environ.get("RAYLIGHT_WATCH_TIMEOUT", "300"))
    settings.watching.server_timeout = watch_timeout
    settings.watching.client_timeout = watch_timeout + 30
    settings.watching.connect_timeout = 10
    settings.networking.connect_timeout = 10
    settings.networking.request_timeout = 30
    workers = int(os.environ.get("RAYLIGHT_WORKERS", "16"))
    if not hasattr(memo, "settings"):
        memo.settings = OperatorSettings()
    memo.kube = Kube(pool_size=workers * 2)
    memo.cache = ObjectCache()
    memo.cleanup = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cleanup")

    def enqueue(key: Hashable) -> None:
        memo.queue.add(key)

    memo.poller = ProgressPoller(PROGRESS_INTERVAL_S, on_change=enqueue)
    memo.events = EventRecorder(memo.kube)
    reconciler = Reconciler(memo.kube, memo.cache, memo.settings, memo.poller, memo.events)
    memo.elector = None
    # Bodies of resources deleted while this replica stood by: the replica that comes to lead ends
    # their MLflow runs (the leader may have been the one that was down when they went).
    memo.deleted_while_standing_by = collections.deque(maxlen=_DELETED_KEPT)
    lease = getattr(memo, "lease", None)
    if lease is not None:
        def lead() -> None:  # everything the cache knows gets a reconcile by the new leader
            for key in memo.cache.resource_keys():
                memo.queue.add(key)
            take_over_deleted(memo)

        memo.elector = LeaderElector(memo.kube.api, name=lease[1], namespace=lease[0], on_started_leading=lead)
        memo.kube.fence(memo.elector.check_writable)
    gate = (lambda: memo.elector.leading) if memo.elector is not None else None
    memo.queue = WorkQueue(reconciler, workers, on_error=_log_failure, gate=gate)
    memo.events.start()
    memo.queue.start()
    memo.poller.start()
    if memo.elector is not None:
        memo.elector.start()
    if getattr(memo, "metrics_port", None):
        metrics.serve(memo.metrics_port, memo.cache.resource_keys, lambda: is_leading(memo))


@kopf.on.cleanup()
def shut_down(memo: kopf.Memo, **_: Any) -> None:
    if memo.elector is not None:
        memo.elector.stop()  # hands the Lease back: a standby takes over at once
    memo.queue.stop()
    memo.poller.stop()
    memo.events.stop()
    memo.cleanup.shutdown(wait=True, cancel_futures=False)


def is_leading(memo: kopf.Memo) -> bool:
    """Whether this replica acts: it holds the Lease, or runs without leader election."""
    return memo.elector is None or bool(memo.elector.leading)


def end_runs_of_deleted(memo: kopf.Memo, body: dict[str, Any]) -> None:
    """A deleted resource's RayJob goes with it (owner references): its MLflow runs must not stay
    RUNNING. The leader ends them; a standby keeps the body in case it comes to lead (one writer to
    MLflow, as to the API server)."""
    if is_leading(memo):
        memo.cleanup.submit(end_runs, body, memo.settings)
    else:
        memo.deleted_while_standing_by.append(body)


def take_over_deleted(memo: kopf.Memo) -> None:
    """The new leader ends the runs of the resources deleted while it stood by."""
    while memo.deleted_while_standing_by:
        memo.cleanup.submit(end_runs, memo.deleted_while_standing_by.popleft(), memo.settings)


def _log_failure(key: Hashable, exc: BaseException) -> None:
    kind = key[0] if isinstance(key, tuple) else "?"
    metrics.ERRORS.labels(kind=kind, reason=type(exc).__name__).inc()
    log.error("reconcile of %s failed; retrying with backoff: %s", key, exc,
              exc_info=not isinstance(exc, kopf.TemporaryError | NotLeading | HTTPError))


async def resource_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    if type == "DELETED":
        key: Key = (body["kind"], body["metadata"]["namespace"], body["metadata"]["name"])
        memo.cache.drop_resource(key)
        memo.queue.forget(key)
        memo.poller.forget(key)
        metrics.drop_phase(key)
        end_runs_of_deleted(memo, dict(body))
        return
    key = memo.cache.put_resource(body)
    status = body.get("status") or {}
    metrics.first_phase(key, status.get("phase") or "Pending")
    if type == "MODIFIED" and memo.cache.is_own_write(key, body):
        return
    # A user's create or spec change goes ahead of status writes and resyncs.
    memo.queue.add(key, urgent=status.get("observedGeneration") != body["metadata"].get("generation"))


async def rayjob_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    key = memo.cache.put_rayjob(body, deleted=type == "DELETED")
    if key is not None:
        memo.queue.add(key)


async def pod_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    key = memo.cache.put_pod(body, deleted=type == "DELETED")
    if key is not None:
        memo.queue.add(key)


for _plural in PLURALS.values():
    kopf.on.event(GROUP, VERSION, _plural, id="enqueue")(resource_event)
kopf.on.event("ray.io", "v1", "rayjobs", labels={"app.kubernetes.io/managed-by": MANAGED_BY},
              id="enqueue-owner")(rayjob_event)
kopf.on.event("", "v1", "pods", labels={LABEL_KIND: kopf.PRESENT}, id="enqueue-owner")(pod_event)
