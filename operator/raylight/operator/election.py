"""Leader election on a coordination.k8s.io Lease, as client-go and controller-runtime do it.

Every replica watches and keeps its cache warm; only the Lease's holder reconciles, so a standby
takes over within a lease duration with nothing to re-read. A holder is presumed gone when its
renewals stop for `lease_duration` as measured on the candidate's own clock (client-go's rule:
no trust in clocks across machines). Optimistic concurrency on the Lease's resourceVersion
makes two candidates taking over at once end with one holder.
"""

from __future__ import annotations

import datetime
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("raylight.operator")


def _micro_time() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, api: client.ApiClient, name: str, namespace: str, identity: str | None = None,
                 lease_duration: float = 15.0, renew_deadline: float = 10.0, retry_period: float = 2.0,
                 on_started_leading: Callable[[], None] | None = None) -> None:
        self.api = api
        self.coordination = client.CoordinationV1Api(api)
        self.name, self.namespace = name, namespace
        self.identity = identity or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
        self.lease_duration, self.renew_deadline, self.retry_period = lease_duration, renew_deadline, retry_period
        self._on_started_leading = on_started_leading
        self._leading = threading.Event()
        self._stopped = threading.Event()
        self._observed: tuple[str | None, str | None] = (None, None)  # (holder, renewTime) last seen
        self._observed_at = 0.0  # when that record last changed, on our clock
        self._renewed_at = 0.0
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)

    @property
    def leading(self) -> bool:
        return self._leading.is_set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop campaigning; a holder hands the Lease back so a standby takes over at once."""
        self._stopped.set()
        self._thread.join(timeout=self.retry_period * 2)
        if self._leading.is_set():
            self._leading.clear()
            try:
                lease = self._read()
                if lease and lease["spec"].get("holderIdentity") == self.identity:
                    self._patch({"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                                 "spec": {"holderIdentity": None, "leaseDurationSeconds": 1}})
            except ApiException as exc:
                log.info("could not hand the Lease back: %s", exc.reason)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                held = self._try_acquire_or_renew()
            except ApiException as exc:
                log.warning("leader election: %s %s", exc.status, exc.reason)
                held = False
            now = time.monotonic()
            if held:
                self._renewed_at = now
                if not self._leading.is_set():
                    log.info("leading as %s (Lease %s/%s)", self.identity, self.namespace, self.name)
                    self._leading.set()
                    if self._on_started_leading is not None:
                        self._on_started_leading()
            elif self._leading.is_set() and now - self._renewed_at > self.renew_deadline:
                log.warning("lost the Lease %s/%s: standing by", self.namespace, self.name)
                self._leading.clear()
            self._stopped.wait(self.retry_period)

    def _read(self) -> dict[str, Any] | None:
        try:
            lease = self.coordination.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        found = self.api.sanitize_for_serialization(lease)
        found.setdefault("spec", {})
        return cast(dict[str, Any], found)

    def _patch(self, body: dict[str, Any]) -> None:
        """A merge patch whose resourceVersion is its precondition (a 409 when the Lease moved)."""
        self.coordination.patch_namespaced_lease(self.name, self.namespace, cast(Any, body),
                                                 _content_type="application/merge-patch+json")

    def _try_acquire_or_renew(self) -> bool:
        lease = self._read()
        if lease is None:
            return self._create()
        spec = lease["spec"]
        holder = spec.get("holderIdentity")
        record = (holder, spec.get("renewTime"))
        now = time.monotonic()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = spec.get("leaseDurationSeconds") or self.lease_duration
        mine = holder == self.identity
        if holder and not mine and now - self._observed_at < duration:
            return False  # someone else holds it and renews it
        body: dict[str, Any] = {
            "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
            "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.lease_duration),
                     "renewTime": _micro_time()},
        }
        if not mine:
            body["spec"].update(acquireTime=_micro_time(), leaseTransitions=(spec.get("leaseTransitions") or 0) + 1)
        try:
            self._patch(body)
        except ApiException as exc:
            if exc.status == 409:
                return False  # another candidate got there first
            raise
        return True

    def _create(self) -> bool:
        now = _micro_time()
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": self.name, "namespace": self.namespace},
                 "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.lease_duration),
                          "acquireTime": now, "renewTime": now, "leaseTransitions": 0}}
        try:
            self.coordination.create_namespaced_lease(self.namespace, cast(Any, lease))
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True
