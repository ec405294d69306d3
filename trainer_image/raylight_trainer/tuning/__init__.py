"""A TuneSweep: Ray Tune's trials, ASHA, and the sweep's record in MLflow:

- `sweep`: the sweep from start to its best model (`run_sweep`).
- `trial`: what a trial runs (`run_trial`, `TrialContext`) and the search space (`to_tune`).
- `outcomes`: the trials' ends as read back from Tune and MLflow (`SweepResult`, `TrialOutcome`).
- `progress`: live progress in MLflow while trials run (`ProgressReporter`).
- `old_paths`: the module paths a sweep saved by an older release names, for its resume.

Imports `runtime`, `data`, `model`, `tracking` and `training`; never `console`.
"""
