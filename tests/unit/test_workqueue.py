"""The operator's work queue: one reconcile per key at a time, the last event never lost, retries."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Hashable

from raylight.operator.workqueue import Outcome, WorkQueue
from tests.kube import wait_for


def test_a_key_is_never_reconciled_twice_at_once_and_an_event_during_a_reconcile_is_not_lost() -> None:
    active: set[Hashable] = set()
    overlaps: list[Hashable] = []
    runs: list[tuple[Hashable, int]] = []
    version = {"a": 0}
    lock = threading.Lock()
    inside = threading.Event()
    release = threading.Event()

    def reconcile(key: Hashable) -> Outcome:
        with lock:
            if key in active:
                overlaps.append(key)
            active.add(key)
            seen = version["a"]
        inside.set()
        release.wait(5)
        with lock:
            active.discard(key)
            runs.append((key, seen))
        return Outcome()

    queue = WorkQueue(reconcile, workers=4)
    queue.start()
    try:
        queue.add("a")
        assert inside.wait(5)
        for _ in range(10):  # a burst of events while the first reconcile runs
            version["a"] += 1
            queue.add("a")
        release.set()
        wait_for(lambda: len(runs) >= 2, timeout=5, what="the second reconcile")
        time.sleep(0.3)
        assert overlaps == []
        assert runs == [("a", 0), ("a", 10)], "ten events while busy: exactly one more reconcile, seeing the last"
    finally:
        queue.stop()


def test_failures_back_off_and_a_requeue_comes_back() -> None:
    calls: list[float] = []

    def reconcile(key: Hashable) -> Outcome:
        calls.append(time.monotonic())
        if len(calls) <= 2:
            raise RuntimeError("API server unavailable")
        if len(calls) == 3:
            return Outcome(requeue_after=0.2)
        return Outcome()

    errors: list[str] = []
    queue = WorkQueue(reconcile, workers=2, on_error=lambda key, exc: errors.append(str(exc)))
    queue.start()
    try:
        queue.add("k")
        wait_for(lambda: len(calls) == 4, timeout=10, what="retries and the requeue")
        gaps = [b - a for a, b in itertools.pairwise(calls)]
        # Lower bounds only: a busy machine may be late, never early.
        assert gaps[0] >= 0.45 and gaps[1] >= 0.95 and gaps[1] > gaps[0], gaps  # 0.5 s, then 1 s
        assert gaps[2] >= 0.18, gaps
        assert errors == ["API server unavailable"] * 2
        time.sleep(0.5)
        assert len(calls) == 4, "no requeue asked: no more reconciles"
    finally:
        queue.stop()


def test_an_earlier_requeue_wins_and_forget_drops_pending_retries() -> None:
    calls: list[Hashable] = []
    queue = WorkQueue(lambda key: calls.append(key) or Outcome(), workers=1)
    queue.start()
    try:
        queue.add_after("x", 30)
        queue.add_after("x", 0.1)
        wait_for(lambda: calls == ["x"], timeout=5, what="the earlier requeue")
        queue.add_after("y", 0.2)
        queue.forget("y")
        time.sleep(0.5)
        assert calls == ["x"]
    finally:
        queue.stop()


def test_an_add_while_a_requeue_is_pending_wakes_a_worker_not_the_timer() -> None:
    # The timer thread waits too; an add must still reach a worker (a lost wake-up left a key in
    # the queue until its resync).
    calls: list[float] = []
    queue = WorkQueue(lambda key: calls.append(time.monotonic()) or Outcome(requeue_after=60), workers=1)
    queue.start()
    try:
        for round_ in range(1, 21):
            queue.add("k")
            wait_for(lambda r=round_: len(calls) == r, timeout=5, what=f"reconcile {round_}")
    finally:
        queue.stop()
