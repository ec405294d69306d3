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


def test_urgent_keys_go_first_and_a_promoted_key_runs_once() -> None:
    order: list[Hashable] = []
    gate = threading.Event()

    def reconcile(key: Hashable) -> Outcome:
        if key == "blocker":
            gate.wait(5)
        order.append(key)
        return Outcome()

    queue = WorkQueue(reconcile, workers=1)
    queue.start()
    try:
        queue.add("blocker")  # holds the one worker while the others queue up
        wait_for(lambda: len(queue) == 0, timeout=5, what="the blocker taken")
        for key in ("status-1", "status-2", "promoted"):
            queue.add(key)
        queue.add("new-1", urgent=True)
        queue.add("promoted", urgent=True)  # already queued: moves ahead, stays queued once
        queue.add("new-2", urgent=True)
        queue.add("new-1")  # a normal add does not demote it
        assert len(queue) == 5
        gate.set()
        wait_for(lambda: len(order) >= 6, timeout=5, what="every key reconciled")
        time.sleep(0.2)
        assert order == ["blocker", "new-1", "promoted", "new-2", "status-1", "status-2"]
    finally:
        queue.stop()


def test_an_urgent_add_during_a_reconcile_comes_back_urgent() -> None:
    order: list[Hashable] = []
    inside, release = threading.Event(), threading.Event()

    def reconcile(key: Hashable) -> Outcome:
        if key == "a" and not inside.is_set():
            inside.set()
            release.wait(5)
        order.append(key)
        return Outcome()

    queue = WorkQueue(reconcile, workers=1)
    queue.start()
    try:
        queue.add("a")
        assert inside.wait(5)
        queue.add("b")
        queue.add("a", urgent=True)  # while "a" runs: it is dirty, and urgent when it comes back
        release.set()
        wait_for(lambda: len(order) >= 3, timeout=5, what="three reconciles")
        assert order == ["a", "a", "b"]
    finally:
        queue.stop()
