"""The live trial table and the status models' wire form."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

from rich.console import Console

from raylight.api import BestTrial, TuneSweepStatus
from raylight_trainer.console.progress import LiveTrials, TrialTable


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


def test_off_a_terminal_each_trial_event_and_epoch_is_one_log_line() -> None:
    """In a pod's log or a pipe a live table shows only its last frame: print lines instead."""
    out = io.StringIO()
    callback = LiveTrials(TrialTable("val_acc", max_t=3), Console(file=out, width=80))
    assert callback.lines and callback.live is None
    config = {"training.learningRate": 0.001}
    # Tune calls back before it updates trial.status: the callback must not rely on it.
    t1 = SimpleNamespace(trial_id="t1", status="PENDING", config=config, last_result={})
    t2 = SimpleNamespace(trial_id="t2", status="PENDING", config=config, last_result={})
    callback.on_trial_start(0, [], t1)
    callback.on_trial_start(0, [], t2)
    callback.on_trial_result(0, [], t1, {"epochs": 1, "val_acc": 0.5})
    callback.on_trial_result(0, [], t2, {"epochs": 1, "val_acc": 0.25})
    callback.on_trial_result(0, [], t1, {"epochs": 2, "val_acc": 0.625})
    t1.status = t2.status = "RUNNING"
    t2.last_result = {"epochs": 1, "val_acc": 0.25}
    callback.on_trial_complete(0, [], t2)
    t1.last_result = {"epochs": 2, "val_acc": 0.625}
    callback.on_trial_error(0, [], t1)
    t1.status, t2.status = "ERROR", "TERMINATED"
    lines = [line.split(" ", 1)[1] for line in out.getvalue().splitlines()]  # without the time
    assert lines == [
        "trial t1 started: learningRate=0.001",
        "trial t2 started: learningRate=0.001",
        "trial t1 epoch 1/3 val_acc=0.5000",
        "trial t2 epoch 1/3 val_acc=0.2500",
        "trial t1 epoch 2/3 val_acc=0.6250",
        "trial t2 stopped early by ASHA at epoch 1/3, val_acc=0.2500",
        "trial t1 failed at epoch 2/3",
    ]
    # A resumed sweep's restored trial (finished in an earlier run) gets no callbacks but its row.
    restored = SimpleNamespace(trial_id="t0", status="TERMINATED", config=config,
                               last_result={"epochs": 3, "val_acc": 0.75})
    callback.on_experiment_end([restored, t1, t2])  # nothing new: only the final table follows
    table = out.getvalue().splitlines()[len(lines):]
    assert any("t1" in line and "ERROR" in line for line in table)
    assert any("t0" in line and "TERMINATED" in line and "3/3" in line for line in table)
    assert not any(re.match(r"\d\d:\d\d:\d\d trial ", line) for line in table)


def test_a_trial_cut_by_an_interrupt_is_said_to_resume_not_to_have_finished() -> None:
    """Tune saves the running trials as running on Ctrl-C, then ends them: not 'finished'."""
    import os
    import signal

    import pytest

    from raylight_trainer.runtime import interrupt

    out = io.StringIO()
    callback = LiveTrials(TrialTable("val_acc", max_t=3), Console(file=out, width=120))
    running = SimpleNamespace(trial_id="t1", status="PENDING", config={}, last_result={})
    callback.on_trial_start(0, [], running)
    running.status = "RUNNING"
    callback.on_trial_result(0, [], running, {"epochs": 1, "val_acc": 0.5})
    with interrupt.handling_signals():
        with pytest.raises(KeyboardInterrupt):  # outside Tune's fit: at once, and remembered
            os.kill(os.getpid(), signal.SIGINT)
        running.status = "TERMINATED"  # as Tune's clean-up leaves it
        callback.on_experiment_end([running])
    text = out.getvalue()
    assert "trial t1 cut short at epoch 1/3 by the interrupt (it resumes from its last checkpoint)" in text
    assert "finished" not in text and any("t1" in line and "INTERRUPTED" in line for line in text.splitlines())
