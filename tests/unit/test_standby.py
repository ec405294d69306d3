"""A standby replica writes nothing to MLflow: the runs of resources deleted while it stands by are
ended by the leader, and by this replica only once it comes to lead (the leader may have been the
one that was down when they went)."""

from __future__ import annotations

import collections
from types import SimpleNamespace
from typing import Any

from raylight.operator import handlers
from raylight.operator.progress import end_runs


class Recorder:
    """A stand-in for the cleanup pool: what was submitted, not run."""

    def __init__(self) -> None:
        self.submitted: list[tuple[Any, ...]] = []

    def submit(self, *call: Any) -> None:
        self.submitted.append(call)


def memo(leading: bool | None) -> Any:
    elector = None if leading is None else SimpleNamespace(leading=leading)
    return SimpleNamespace(elector=elector, cleanup=Recorder(), settings=object(),
                           deleted_while_standing_by=collections.deque(maxlen=3))


def body(name: str) -> dict[str, Any]:
    return {"kind": "TuneSweep", "metadata": {"name": name, "namespace": "ns"}}


def test_the_leader_ends_a_deleted_resources_runs_and_a_standby_keeps_them_for_later() -> None:
    leader, standby, alone = memo(True), memo(False), memo(None)
    for each in (leader, standby, alone):
        handlers.end_runs_of_deleted(each, body("gone"))
    assert [call[:2] for call in leader.cleanup.submitted] == [(end_runs, body("gone"))]
    assert [call[:2] for call in alone.cleanup.submitted] == [(end_runs, body("gone"))]  # no election: it leads
    assert standby.cleanup.submitted == []

    standby.elector.leading = True
    handlers.take_over_deleted(standby)
    assert [call[:2] for call in standby.cleanup.submitted] == [(end_runs, body("gone"))]
    assert not standby.deleted_while_standing_by


def test_a_standby_remembers_a_bounded_number_of_deleted_resources() -> None:
    standby = memo(False)
    for index in range(5):
        handlers.end_runs_of_deleted(standby, body(f"gone-{index}"))
    assert [b["metadata"]["name"] for b in standby.deleted_while_standing_by] == ["gone-2", "gone-3", "gone-4"]
