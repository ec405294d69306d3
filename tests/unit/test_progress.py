"""The live trial table and the status models' wire form."""

from __future__ import annotations

from rich.console import Console

from raylight.api import BestTrial, TuneSweepStatus
from raylight.local.progress import TrialTable


def test_trial_table_marks_trials_ended_before_max_t_as_stopped() -> None:
    table = TrialTable("val_acc", max_t=8)
    table.update("t1", "TERMINATED", {"training.learningRate": 0.001}, {"epochs": 2, "val_acc": 0.5})
    table.update("t2", "TERMINATED", {"training.learningRate": 0.003}, {"epochs": 8, "val_acc": 0.97})
    table.update("t3", "RUNNING", {"training.learningRate": 0.002}, None)
    console = Console(width=120, record=True)
    console.print(table.render())
    text = console.export_text()
    lines = {line.split("│")[1].strip(): line for line in text.splitlines() if "│ t" in line}
    assert "STOPPED" in lines["t1"] and "2/8" in lines["t1"] and "0.5000" in lines["t1"]
    assert "TERMINATED" in lines["t2"] and "8/8" in lines["t2"] and "learningRate=0.003" in lines["t2"]
    assert "RUNNING" in lines["t3"] and "0/8" in lines["t3"]


def test_status_is_camel_case_on_the_wire() -> None:
    status = TuneSweepStatus(phase="Running", observed_generation=2,
                             best_trial=BestTrial(id="t2", metric=0.97, config={"model.depth": 4}))
    wire = status.wire()
    assert wire["observedGeneration"] == 2 and wire["bestTrial"]["metric"] == 0.97
    assert "stoppedEarly" in wire["trials"]
