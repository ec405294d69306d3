"""The phase gauge: the reconciler's phase wins over a late watch event, and only live resources count."""

from __future__ import annotations

from raylight.operator import metrics


def test_a_late_watch_event_does_not_take_the_phase_back() -> None:
    job = ("TrainingJob", "t-metrics", "late")
    metrics.first_phase(job, "Pending")  # the watch's first sight of it
    metrics.set_phase(job, "Running")  # the reconcile that wrote Running
    metrics.first_phase(job, "Pending")  # the event of the older Pending write, seconds late
    assert metrics.phase_counts([job]) == {("TrainingJob", "Running"): 1}
    metrics.set_phase(job, "Succeeded")
    assert metrics.phase_counts([job]) == {("TrainingJob", "Succeeded"): 1}
    metrics.drop_phase(job)
    assert metrics.phase_counts([job]) == {}


def test_only_resources_that_exist_are_counted() -> None:
    kept, deleted = ("TuneSweep", "t-metrics", "kept"), ("TuneSweep", "t-metrics", "deleted")
    metrics.set_phase(kept, "Running")
    metrics.set_phase(deleted, "Running")  # a reconcile that ended after the DELETED event
    collector = metrics.PhaseCollector(lambda: [kept])
    samples = {tuple(s.labels.values()): s.value for family in collector.collect()
               if family.name == "raylight_resources" for s in family.samples}
    assert samples == {("TuneSweep", "Running"): 1.0}
    for key in (kept, deleted):
        metrics.drop_phase(key)
