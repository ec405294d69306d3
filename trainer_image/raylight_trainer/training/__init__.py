"""One model trained, on one worker or as a DDP group:

- `module`: the LightningModule (`ImageClassifier`: AdamW groups, warmup + cosine, channels_last).
- `workers`: what every worker runs (`fit_worker`, `fit_in_trial`, `build_trainer`, checkpoints).
- `job`: a TrainingJob from start to its logged model, resumable (`run_training_job`, `RunSettings`,
  the run directory's state).
- `resources`: what a worker group asks of the Ray cluster, and whether it ever fits.

Imports `runtime`, `data`, `model` and `tracking`; never `tuning` or `console`.
"""
