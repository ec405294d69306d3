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


def test_a_standby_says_so_and_exports_no_resource_gauges() -> None:
    """A standby's phases are frozen (it reconciles nothing), and a sum over the replicas a
    ServiceMonitor scrapes would count each resource twice: only the leader exports them."""
    job = ("TrainingJob", "t-metrics", "standby")
    metrics.set_phase(job, "Running")

    def scrape(leading: bool) -> dict[str, dict[tuple[str, ...], float]]:
        collector = metrics.PhaseCollector(lambda: [job], lambda: leading)
        return {family.name: {tuple(s.labels.values()): s.value for s in family.samples}
                for family in collector.collect()}

    standby, leader = scrape(False), scrape(True)
    assert standby["raylight_leader"] == {(): 0.0} and standby["raylight_resources"] == {}
    assert leader["raylight_leader"] == {(): 1.0}
    assert leader["raylight_resources"] == {("TrainingJob", "Running"): 1.0}
    metrics.drop_phase(job)
