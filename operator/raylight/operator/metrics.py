"""Prometheus metrics of the operator: reconciles, errors, and resources by phase."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

RECONCILES = Counter("raylight_reconciles", "Reconciles of TrainingJobs and TuneSweeps", ["kind"])
ERRORS = Counter("raylight_reconcile_errors", "Reconciles that ended in an error", ["kind", "reason"])

# (kind, namespace, name) -> phase, kept current by an event handler on our resources.
PHASES: dict[tuple[str, str, str], str] = {}


class PhaseCollector(Collector):
    def collect(self) -> Iterator[Any]:
        family = GaugeMetricFamily("raylight_resources", "TrainingJobs and TuneSweeps by phase",
                                   labels=["kind", "phase"])
        for (kind, phase), count in sorted(Tally((k[0], p) for k, p in PHASES.items()).items()):
            family.add_metric([kind, phase], count)
        yield family


_started = False


def serve(port: int) -> None:
    """Expose /metrics on this port (once per process)."""
    global _started
    if _started:
        return
    REGISTRY.register(PhaseCollector())
    start_http_server(port)
    _started = True
