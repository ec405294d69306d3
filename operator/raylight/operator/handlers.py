"""kopf as the watch layer: every event only updates the cache and enqueues one reconcile.

- A TrainingJob or TuneSweep (created, changed, listed at start-up) enqueues itself.
- A RayJob or a pod it caused enqueues the resource its labels name.
- The progress poller enqueues a resource when MLflow shows something new.
The reconcile (reconciler.py), run by the work queue's workers, is the only writer of status.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from raylight.api import GROUP, VERSION

from . import metrics
from .builder import LABEL_KIND, MANAGED_BY, OperatorSettings
from .cache import Key, ObjectCache
from .election import LeaderElector
from .events import EventRecorder
from .kube import PLURALS, Kube
from .progress import ProgressPoller, end_runs
from .reconciler import Reconciler
from .workqueue import WorkQueue

PROGRESS_INTERVAL_S = float(os.environ.get("RAYLIGHT_PROGRESS_INTERVAL", "30"))
log = logging.getLogger("raylight.operator")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.level = logging.WARNING  # kopf's own Events: real failures only
    # The resources and namespaces are known at start: no watching of CRDs and namespaces, so
    # no RBAC for them (install the CRDs before the operator, as the Helm chart does).
    settings.scanning.disabled = True
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
    lease = getattr(memo, "lease", None)
    if lease is not None:
        def lead() -> None:  # everything the cache knows gets a reconcile by the new leader
            for key in memo.cache.resource_keys():
                memo.queue.add(key)

        memo.elector = LeaderElector(memo.kube.api, name=lease[1], namespace=lease[0], on_started_leading=lead)
    gate = (lambda: memo.elector.leading) if memo.elector is not None else None
    memo.queue = WorkQueue(reconciler, workers, on_error=_log_failure, gate=gate)
    memo.events.start()
    memo.queue.start()
    memo.poller.start()
    if memo.elector is not None:
        memo.elector.start()
    if getattr(memo, "metrics_port", None):
        metrics.serve(memo.metrics_port, memo.cache.resource_keys)


@kopf.on.cleanup()
def shut_down(memo: kopf.Memo, **_: Any) -> None:
    if memo.elector is not None:
        memo.elector.stop()  # hands the Lease back: a standby takes over at once
    memo.queue.stop()
    memo.poller.stop()
    memo.events.stop()
    memo.cleanup.shutdown(wait=True, cancel_futures=False)


def _log_failure(key: Hashable, exc: BaseException) -> None:
    kind = key[0] if isinstance(key, tuple) else "?"
    metrics.ERRORS.labels(kind=kind, reason=type(exc).__name__).inc()
    log.error("reconcile of %s failed; retrying with backoff: %s", key, exc,
              exc_info=not isinstance(exc, kopf.TemporaryError))


async def resource_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    if type == "DELETED":
        key: Key = (body["kind"], body["metadata"]["namespace"], body["metadata"]["name"])
        memo.cache.drop_resource(key)
        memo.queue.forget(key)
        memo.poller.forget(key)
        metrics.drop_phase(key)
        # Its RayJob goes with it (owner references): its MLflow runs must not stay RUNNING.
        memo.cleanup.submit(end_runs, dict(body), memo.settings)
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
