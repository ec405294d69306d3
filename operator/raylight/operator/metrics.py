"""Prometheus metrics of the operator: reconciles, errors, resources by phase, the work queue."""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .progress import requests_made

RECONCILES = Counter("raylight_reconciles", "Reconciles of TrainingJobs and TuneSweeps", ["kind"])
ERRORS = Counter("raylight_reconcile_errors", "Reconciles that ended in an error", ["kind", "reason"])

Key = tuple[str, str, str]

# (kind, namespace, name) -> the phase its last reconcile computed. Written by the reconcilers and
# (for a resource no reconcile has seen yet) the watch handlers, read by Prometheus' thread: all
# under the lock, and the scrape counts a copy.
_PHASES: dict[Key, str] = {}
_PHASES_LOCK = threading.Lock()


def set_phase(key: Key, phase: str) -> None:
    """The phase a reconcile computed: the status the operator writes, the gauge's truth."""
    with _PHASES_LOCK:
        _PHASES[key] = phase


def first_phase(key: Key, phase: str) -> None:
    """The phase a watch event shows, kept only until a reconcile computes one. A watch event
    can arrive seconds after a later status write: it must not take the gauge back."""
    with _PHASES_LOCK:
        _PHASES.setdefault(key, phase)


def drop_phase(key: Key) -> None:
    with _PHASES_LOCK:
        _PHASES.pop(key, None)


def phase_counts(live: Iterable[Key]) -> dict[tuple[str, str], int]:
    """The `live` resources (those that exist) by (kind, phase): a reconcile that ended after a
    resource's deletion must not count it."""
    with _PHASES_LOCK:
        phases = dict(_PHASES)
    return dict(Tally((key[0], phases[key]) for key in live if key in phases))


class PhaseCollector(Collector):
    """`raylight_resources` from the leader alone: a standby's phases are frozen (it reconciles
    nothing), and a sum over the replicas a ServiceMonitor scrapes would count each resource twice.
    Every replica says whether it leads (`raylight_leader`)."""

    def __init__(self, live: Callable[[], Iterable[Key]], leading: Callable[[], bool] = lambda: True) -> None:
        self.live, self.leading = live, leading

    def collect(self) -> Iterator[Any]:
        leading = self.leading()
        yield GaugeMetricFamily("raylight_leader", "1 on the replica that reconciles (holds the Lease), else 0",
                                value=1 if leading else 0)
        family = GaugeMetricFamily("raylight_resources", "TrainingJobs and TuneSweeps by phase (the leader's)",
                                   labels=["kind", "phase"])
        if leading:
            for (kind, phase), count in sorted(phase_counts(self.live()).items()):
                family.add_metric([kind, phase], count)
        yield family
        yield CounterMetricFamily("raylight_mlflow_requests", "Requests made to MLflow", value=requests_made())


_started = False


def serve(port: int, live: Callable[[], Iterable[Key]], leading: Callable[[], bool] = lambda: True) -> None:
    """Expose /metrics on this port (once per process); `live` lists the resources that exist,
    `leading` says whether this replica reconciles."""
    global _started
    if _started:
        return
    REGISTRY.register(PhaseCollector(live, leading))
    start_http_server(port)
    _started = True
