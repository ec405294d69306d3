"""A work queue of resource keys, after client-go's: what the operator's control loop runs on.

Watch events and timers only add a key; workers take keys and reconcile them. A key waits in the
queue at most once however many events arrive for it, and one key is never reconciled by two
workers at once: an add while it is being reconciled marks it dirty, and it is queued again when
that reconcile ends, so the last event always gets a reconcile that sees it.

Keys come out in the order they were added, except that an urgent add (a user created or changed a
resource) goes ahead of everything else: in a burst of new resources their RayJobs come first, and
the status writes and resyncs that follow wait (as controller-runtime's priority queue does).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

# Failures back off per key: 0.5 s, 1 s, 2 s ... up to five minutes (client-go's default curve,
# capped lower: a run's status should not lag for 16 minutes after the API server comes back).
_BASE_DELAY_S = 0.5
_MAX_DELAY_S = 300.0


@dataclass(frozen=True)
class Outcome:
    """What a reconcile asks of the queue: come back after this many seconds (None: only on events)."""

    requeue_after: float | None = None


class WorkQueue:
    def __init__(self, reconcile: Callable[[Hashable], Outcome], workers: int,
                 on_error: Callable[[Hashable, BaseException], None] | None = None,
                 gate: Callable[[], bool] | None = None) -> None:
        self._reconcile = reconcile
        self._on_error = on_error
        # Reconciles run only while the gate is open (this replica leads); keys taken while it is
        # closed are dropped: whoever opens it enqueues everything again.
        self._gate = gate
        self._lock = threading.Lock()
        # Two conditions on the one lock: a notify for work must wake a worker, never the timer.
        self._has_work = threading.Condition(self._lock)
        self._timer_wake = threading.Condition(self._lock)
        # Two FIFOs, urgent first. A key promoted to urgent leaves a stale entry in the other,
        # skipped when reached (it is no longer in _queued, or it is queued again behind it).
        self._urgent: deque[Hashable] = deque()
        self._ready: deque[Hashable] = deque()
        self._queued: dict[Hashable, bool] = {}  # waiting keys -> whether urgent
        self._active: set[Hashable] = set()  # being reconciled
        self._dirty: dict[Hashable, bool] = {}  # added while active -> whether urgent
        self._delayed: list[tuple[float, int, Hashable]] = []  # (due, tiebreak, key) heap
        self._due: dict[Hashable, float] = {}  # the earliest due time of each delayed key
        self._failures: dict[Hashable, int] = {}
        self._counter = itertools.count()
        self._stopped = False
        self._threads = [threading.Thread(target=self._work, name=f"reconcile-{i}", daemon=True)
                         for i in range(workers)]
        self._timer = threading.Thread(target=self._promote_due, name="workqueue-timer", daemon=True)

    def start(self) -> None:
        for thread in (*self._threads, self._timer):
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stopped = True
            self._has_work.notify_all()
            self._timer_wake.notify_all()
        deadline = time.monotonic() + timeout
        for thread in (*self._threads, self._timer):
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))

    def add(self, key: Hashable, urgent: bool = False) -> None:
        with self._lock:
            self._add_locked(key, urgent)

    def add_after(self, key: Hashable, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        due = time.monotonic() + delay
        with self._lock:
            if self._due.get(key, float("inf")) <= due:
                return  # already coming back sooner
            self._due[key] = due
            heapq.heappush(self._delayed, (due, next(self._counter), key))
            self._timer_wake.notify()

    def forget(self, key: Hashable) -> None:
        """Drop a deleted resource's pending retries and its failure count."""
        with self._lock:
            self._failures.pop(key, None)
            self._due.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._queued)

    def _add_locked(self, key: Hashable, urgent: bool = False) -> None:
        if self._stopped:
            return
        if key in self._queued:
            if urgent and not self._queued[key]:
                self._queued[key] = True
                self._urgent.append(key)
            return
        if key in self._active:
            self._dirty[key] = self._dirty.get(key, False) or urgent
            return
        self._queued[key] = urgent
        (self._urgent if urgent else self._ready).append(key)
        self._has_work.notify()

    def _promote_due(self) -> None:
        with self._lock:
            while not self._stopped:
                now = time.monotonic()
                while self._delayed and self._delayed[0][0] <= now:
                    due, _, key = heapq.heappop(self._delayed)
                    if self._due.get(key) == due:  # not superseded by an earlier add_after
                        del self._due[key]
                        self._add_locked(key)
                wait = self._delayed[0][0] - now if self._delayed else None
                self._timer_wake.wait(timeout=wait)

    def _take(self) -> Hashable | None:
        with self._lock:
            while True:
                while not self._queued and not self._stopped:
                    self._has_work.wait()
                if self._stopped:
                    return None
                urgent = bool(self._urgent)
                key = (self._urgent if urgent else self._ready).popleft()
                if key in self._queued and (self._queued[key] or not urgent):
                    del self._queued[key]
                    self._active.add(key)
                    return key
                # A stale entry: the key was promoted, or taken from the other FIFO already.

    def _work(self) -> None:
        while (key := self._take()) is not None:
            retry_after: float | None
            if self._gate is not None and not self._gate():
                with self._lock:
                    self._active.discard(key)
                    self._dirty.pop(key, None)
                continue
            try:
                retry_after = self._reconcile(key).requeue_after
                with self._lock:
                    self._failures.pop(key, None)
            except Exception as exc:  # a worker outlives any one reconcile
                with self._lock:
                    failures = self._failures[key] = self._failures.get(key, 0) + 1
                retry_after = min(_MAX_DELAY_S, _BASE_DELAY_S * 2 ** (failures - 1))
                delay = getattr(exc, "delay", None)  # kopf.TemporaryError(delay=) says when
                if isinstance(delay, int | float) and delay > 0:
                    retry_after = float(delay)
                if self._on_error is not None:
                    self._on_error(key, exc)
            with self._lock:
                self._active.discard(key)
                if key in self._dirty:
                    self._add_locked(key, self._dirty.pop(key))
            if retry_after is not None:
                self.add_after(key, retry_after)
