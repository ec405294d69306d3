"""The Lightning and Tune callbacks that mark a run's stages on its timeline (see `timeline`)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from ray import tune

from .timeline import mark


class EpochMarks(pl.Callback):
    """Marks an epoch's stages. Placed first it marks training and validation; placed last
    (`at_epoch_end`) the moment every other callback (logging, reporting) is done."""

    def __init__(self, at_epoch_end: str | None = None) -> None:
        self.at_epoch_end = at_epoch_end

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.at_epoch_end:
            mark("fit_start")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if batch_idx == 0 and not self.at_epoch_end:
            mark("epoch_start", epoch=trainer.current_epoch + 1)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.at_epoch_end:
            mark("val_start", epoch=trainer.current_epoch + 1)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.at_epoch_end:
            mark("val_end", epoch=trainer.current_epoch + 1)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_epoch_end:
            mark(self.at_epoch_end, epoch=trainer.current_epoch + 1)


class TrialEvents(tune.Callback):
    """The sweep driver's view: when Tune began, and when it started and ended each trial."""

    def setup(self, stop: Any = None, num_samples: int | None = None, total_num_samples: int | None = None,
              **info: Any) -> None:
        mark("tune_start", trial="-")

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        mark("started", trial=trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        mark("ended", trial=trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        mark("ended", trial=trial.trial_id, error=True)
