"""Prometheus metrics of the operator: reconciles, errors, resources by phase, the work queue."""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .progress import requests_made

RECONCILES = Counter("raylight_reconciles", "Reconciles of TrainingJobs and TuneSweeps", ["kind"])
ERRORS = Counter("raylight_reconcile_errors", "Reconciles that ended in an error", ["kind", "reason"])

# (kind, namespace, name) -> phase, written by the watch handlers, read by Prometheus' thread:
# both under the lock, and the scrape counts a copy.
_PHASES: dict[tuple[str, str, str], str] = {}
_PHASES_LOCK = threading.Lock()


def set_phase(key: tuple[str, str, str], phase: str) -> None:
    with _PHASES_LOCK:
        _PHASES[key] = phase


def drop_phase(key: tuple[str, str, str]) -> None:
    with _PHASES_LOCK:
        _PHASES.pop(key, None)


def phase_counts() -> dict[tuple[str, str], int]:
    with _PHASES_LOCK:
        return dict(Tally((key[0], phase) for key, phase in _PHASES.items()))


class PhaseCollector(Collector):
    def collect(self) -> Iterator[Any]:
        family = GaugeMetricFamily("raylight_resources", "TrainingJobs and TuneSweeps by phase",
                                   labels=["kind", "phase"])
        for (kind, phase), count in sorted(phase_counts().items()):
            family.add_metric([kind, phase], count)
        yield family
        yield CounterMetricFamily("raylight_mlflow_requests", "Requests made to MLflow", value=requests_made())


_started = False


def serve(port: int) -> None:
    """Expose /metrics on this port (once per process)."""
    global _started
    if _started:
        return
    REGISTRY.register(PhaseCollector())
    start_http_server(port)
    _started = True
