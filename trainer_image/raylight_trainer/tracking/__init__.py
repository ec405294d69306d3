"""What a run leaves behind where people look, in MLflow (and W&B):

- `mlflow_runs`: experiments, runs, tags, params, per-epoch metrics, the logged model.
- `logs`: the console output of the driver and of every worker, kept on the run as it grows.
- `attributions`: integrated-gradients pictures of the best model.

Imports `runtime` and `data` of the trainer; never `training`, `tuning` or `console`.
"""
