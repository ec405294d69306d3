"""Leader election on a coordination.k8s.io Lease, as client-go and controller-runtime do it.

Every replica watches and keeps its cache warm; only the Lease's holder reconciles, so a standby
takes over within a lease duration with nothing to re-read. A holder is presumed gone when its
renewals stop for `lease_duration` as measured on the candidate's own clock (client-go's rule:
no trust in clocks across machines). Optimistic concurrency on the Lease's resourceVersion
makes two candidates taking over at once end with one holder.
"""

from __future__ import annotations

import copy
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


class NotLeading(RuntimeError):
    """A write refused because this replica does not hold the Lease long enough to make it."""


# The least time a write may take: below it, the Lease may pass to a standby before the write lands.
MIN_WRITE_WINDOW_S = 0.5


class LeaderElector:
    """One candidate for the Lease.

    The safety rule, as client-go keeps it: a standby takes the Lease once its record has not
    changed for `lease_duration` on the standby's clock, so the leader must have stopped acting by
    then. Here every Lease call is bounded by the time left before the renew deadline (counted from
    when the last good renewal was *sent*), urllib3's retries are off (they repeat a call for a
    whole timeout each), any error is a failed try, and the leader stops leading as soon as the next
    try could not succeed before the deadline. Writes are fenced on `write_window()`."""

    def __init__(self, api: client.ApiClient, name: str, namespace: str, identity: str | None = None,
                 lease_duration: float = 15.0, renew_deadline: float = 10.0, retry_period: float = 2.0,
                 on_started_leading: Callable[[], None] | None = None) -> None:
        # A client of its own: no retries, and no pool shared with reconciles that may hang.
        configuration = copy.deepcopy(api.configuration)
        configuration.retries = False
        self.api = client.ApiClient(configuration)
        self.coordination = client.CoordinationV1Api(self.api)
        self.name, self.namespace = name, namespace
        self._base_identity = identity or socket.gethostname()
        self.identity = f"{self._base_identity}_{uuid.uuid4().hex[:8]}"
        self.lease_duration, self.renew_deadline, self.retry_period = lease_duration, renew_deadline, retry_period
        self._on_started_leading = on_started_leading
        self._leading = threading.Event()
        self._stopped = threading.Event()
        self._observed: tuple[str | None, str | None] = (None, None)  # (holder, renewTime) last seen
        self._observed_at = 0.0  # when that record last changed, on our clock
        self._renewed_at = 0.0  # when the last good renewal was sent
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)

    @property
    def leading(self) -> bool:
        return self._leading.is_set() and time.monotonic() < self._renewed_at + self.renew_deadline

    def write_window(self) -> float:
        """Seconds this replica may still write: until the earliest moment a standby may take the
        Lease (0 when it does not lead). A write's timeout, so that none outlives the leadership."""
        if not self._leading.is_set():
            return 0.0
        return max(0.0, self._renewed_at + self.lease_duration - time.monotonic())

    def check_writable(self) -> float:
        """The write window, or NotLeading where it is too short for a write to land safely."""
        window = self.write_window()
        if window < MIN_WRITE_WINDOW_S:
            raise NotLeading(f"not writing: this replica does not hold the Lease {self.namespace}/{self.name} "
                             f"long enough ({window:.1f} s left)")
        return window

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop campaigning; a holder hands the Lease back so a standby takes over at once."""
        self._stopped.set()
        self._thread.join(timeout=self.renew_deadline + self.retry_period)
        if self._leading.is_set():
            self._leading.clear()
            try:
                lease = self._read(self.retry_period)
                if lease and lease["spec"].get("holderIdentity") == self.identity:
                    self._patch({"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                                 "spec": {"holderIdentity": None, "leaseDurationSeconds": 1}}, self.retry_period)
            except Exception as exc:
                log.info("could not hand the Lease back: %s", _said(exc))

    def _run(self) -> None:
        while not self._stopped.is_set():
            sent = time.monotonic()
            try:
                held = self._try_acquire_or_renew(self._call_deadline(sent))
            except Exception as exc:  # urllib3's errors too: the thread must outlive any failure
                log.warning("leader election: %s", _said(exc))
                held = False
            if held:
                self._renewed_at = sent
                if not self._leading.is_set():
                    log.info("leading as %s (Lease %s/%s)", self.identity, self.namespace, self.name)
                    self._leading.set()
                    if self._on_started_leading is not None:
                        self._on_started_leading()
            elif self._leading.is_set() and \
                    time.monotonic() + self.retry_period >= self._renewed_at + self.renew_deadline:
                self._stand_down()
            self._stopped.wait(self.retry_period)

    def _call_deadline(self, now: float) -> float:
        """When this try's calls must have ended: the renew deadline while leading, else a retry's
        worth of the renew deadline."""
        if self._leading.is_set():
            return self._renewed_at + self.renew_deadline
        return now + self.renew_deadline

    def _stand_down(self) -> None:
        """Stop leading; come back as a newcomer: a new identity, so that a late renewal of the old
        one that landed after all does not make this replica the holder again without a whole
        lease duration of watching, as every other candidate must."""
        log.warning("lost the Lease %s/%s (no renewal within %.0f s): standing by", self.namespace, self.name,
                    self.renew_deadline)
        self._leading.clear()
        self.identity = f"{self._base_identity}_{uuid.uuid4().hex[:8]}"
        self._observed, self._observed_at = (None, None), 0.0

    def _timeout(self, deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0.05:
            raise TimeoutError("the renew deadline passed")
        return left

    def _read(self, timeout: float) -> dict[str, Any] | None:
        try:
            lease = self.coordination.read_namespaced_lease(self.name, self.namespace, _request_timeout=timeout)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        found = self.api.sanitize_for_serialization(lease)
        found.setdefault("spec", {})
        return cast(dict[str, Any], found)

    def _patch(self, body: dict[str, Any], timeout: float) -> None:
        """A merge patch whose resourceVersion is its precondition (a 409 when the Lease moved)."""
        self.coordination.patch_namespaced_lease(self.name, self.namespace, cast(Any, body),
                                                 _content_type="application/merge-patch+json",
                                                 _request_timeout=timeout)

    def _try_acquire_or_renew(self, deadline: float) -> bool:
        lease = self._read(self._timeout(deadline))
        if lease is None:
            return self._create(self._timeout(deadline))
        spec = lease["spec"]
        holder = spec.get("holderIdentity")
        record = (holder, spec.get("renewTime"))
        now = time.monotonic()
        if record != self._observed or not self._observed_at:
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
            self._patch(body, self._timeout(deadline))
        except ApiException as exc:
            if exc.status == 409:
                return False  # another candidate got there first
            raise
        return True

    def _create(self, timeout: float) -> bool:
        now = _micro_time()
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": self.name, "namespace": self.namespace},
                 "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.lease_duration),
                          "acquireTime": now, "renewTime": now, "leaseTransitions": 0}}
        try:
            self.coordination.create_namespaced_lease(self.namespace, cast(Any, lease), _request_timeout=timeout)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True


def _said(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"
