"""The W&B logger's end of a run: a trial that Tune stops is finished, a failure is failed."""

from __future__ import annotations

from typing import Any

import pytest

from raylight_trainer.tracking.mlflow_runs import WandbEpochLogger


class RecordedRun:
    """Stands in for wandb's Run: only its finish() is called here."""

    def __init__(self) -> None:
        self.exit_codes: list[int] = []

    def finish(self, exit_code: int = 0) -> None:
        self.exit_codes.append(exit_code)


@pytest.mark.parametrize(("exception", "exit_code"), [
    (SystemExit(0), 0),  # what Tune raises in tune.report to end a trial that ASHA stops
    (SystemExit(None), 0),
    (SystemExit(1), 1),
    (RuntimeError("CUDA out of memory"), 1),
])
def test_a_stopped_trial_finishes_its_wandb_run_and_a_failure_fails_it(exception: BaseException,
                                                                       exit_code: int) -> None:
    logger = WandbEpochLogger(project="p", run_id="r", name="n", directory="/nonexistent")
    run = RecordedRun()
    logger.run = run
    nothing: Any = None
    logger.on_exception(nothing, nothing, exception)
    assert run.exit_codes == [exit_code] and logger.run is None
