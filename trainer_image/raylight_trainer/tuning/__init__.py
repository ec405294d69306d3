"""A TuneSweep: Ray Tune's trials, ASHA, and the sweep's record in MLflow:

- `sweep`: the sweep from start to its best model (`run_sweep`, `SweepResult`).
- `trial`: what a trial runs (`run_trial`, `TrialContext`) and the search space (`to_tune`).
- `outcomes`: the trials' ends as read back from Tune and MLflow.
- `progress`: live progress in MLflow while trials run (`ProgressReporter`).

Imports `runtime`, `data`, `model`, `tracking` and `training`; never `console`.
"""
