"""What a RayJob's status means for its owner: phases, conditions, transitions."""

from __future__ import annotations

import pytest

from raylight.operator.state import observe_rayjob, status_for_rayjob, transition


def rayjob(deployment: str = "", job: str = "", suspend: bool = False, **status: str) -> dict:
    return {"spec": {"suspend": suspend},
            "status": {"jobDeploymentStatus": deployment, "jobStatus": job, **status}}


@pytest.mark.parametrize(("deployment", "job", "suspend", "phase"), [
    ("", "", False, "Pending"),
    ("Initializing", "", False, "Pending"),
    ("Running", "PENDING", False, "Pending"),
    ("Running", "RUNNING", False, "Running"),
    ("Complete", "SUCCEEDED", False, "Succeeded"),
    ("Complete", "FAILED", False, "Failed"),
    ("Complete", "STOPPED", False, "Failed"),
    ("Failed", "", False, "Failed"),
    ("ValidationFailed", "", False, "Failed"),
    ("Running", "RUNNING", True, "Suspended"),
    ("Suspended", "", True, "Suspended"),
    ("Suspended", "", False, "Suspended"),
    ("Retrying", "", False, "Pending"),
])
def test_phase(deployment: str, job: str, suspend: bool, phase: str) -> None:
    assert observe_rayjob(rayjob(deployment, job, suspend)).phase == phase


def test_failure_keeps_kuberays_reason_and_message() -> None:
    observed = observe_rayjob(rayjob("Failed", reason="DeadlineExceeded", message="past activeDeadlineSeconds"))
    assert (observed.reason, observed.message) == ("DeadlineExceeded", "past activeDeadlineSeconds")


def test_conditions_move_only_when_their_status_flips() -> None:
    start = status_for_rayjob({}, rayjob("Running", "RUNNING", startTime="2026-01-01T00:00:00Z"), "T1")
    assert start["phase"] == "Running" and start["startTime"] == "2026-01-01T00:00:00Z"
    running = {c["type"]: c for c in start["conditions"]}
    assert running["Running"]["status"] == "True" and running["Succeeded"]["status"] == "False"
    current = {**start}
    assert status_for_rayjob(current, rayjob("Running", "RUNNING"), "T2") == {}, "nothing changed: no write"
    done = status_for_rayjob(current, rayjob("Complete", "SUCCEEDED", endTime="2026-01-01T01:00:00Z"), "T3")
    conditions = {c["type"]: c for c in done["conditions"]}
    assert conditions["Succeeded"] == {**conditions["Succeeded"], "status": "True", "lastTransitionTime": "T3"}
    assert conditions["Failed"]["lastTransitionTime"] == "T1", "Failed stayed False: its time stays"
    assert done["completionTime"] == "2026-01-01T01:00:00Z"
    assert transition("Running", done) == ("Normal", "Succeeded",
                                           "Running -> Succeeded: the run finished; results are in MLflow")


def test_failure_is_a_warning_event() -> None:
    update = status_for_rayjob({"phase": "Running"}, rayjob("Failed", reason="AppFailed", message="boom"), "T")
    assert transition("Running", update) == ("Warning", "Failed", "Running -> Failed: boom")
