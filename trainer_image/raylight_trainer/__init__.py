"""The trainer: what runs a TrainingJob or a TuneSweep, in a RayJob's pods and in `raylight run`.

Its rooms, each a concern (the lower ones never import the higher; tests/unit/test_imports.py):

- `runtime`: where a run executes and how it stops (storage, signals, the pods' preStop hook).
- `model`: our ViT and EfficientNet, built from the spec's `model` section.
- `data`: datasets, transforms, the object-store dataset cache.
- `tracking`: MLflow (and W&B) records, the kept logs, the attributions picture.
- `training`: the LightningModule, what each worker runs, a TrainingJob end to end.
- `tuning`: a TuneSweep: its trials, ASHA, live progress, outcomes and best model.
- `console`: what the person who ran the command sees (the driver's side only).

`driver` runs a manifest (both `raylight run` and the RayJob's entrypoint, `python -m
raylight_trainer`); of the operator's package the trainer imports `raylight.api` alone.
"""
