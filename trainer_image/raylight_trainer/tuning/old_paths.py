"""The module paths of the trainer before its rooms, for sweeps saved by such a release.

Tune pickles the experiment's run config, its callbacks included, into the experiment's state
(`tuner.pkl`), each class by its module path: a sweep interrupted on a release before the rooms
names `raylight_trainer.sweep_progress.ProgressReporter`, `raylight_trainer.progress.LiveTrials`,
... and `Tuner.restore` imports those paths again. Each old path is an alias of the module that
holds its names now, registered just before a saved sweep is restored; nothing imports them
otherwise. Modules are named by string: the console's table is the driver's, imported there
already, never by the tuning room itself.
"""

from __future__ import annotations

import importlib
import sys

# old module -> the module that holds its pickled names now (and which names a saved sweep may hold)
OLD_PATHS: dict[str, tuple[str, tuple[str, ...]]] = {
    "raylight_trainer.sweep": ("raylight_trainer.tuning.trial", ("run_trial", "TrialContext")),
    "raylight_trainer.sweep_progress": ("raylight_trainer.tuning.progress", ("ProgressReporter",)),
    "raylight_trainer.resources": ("raylight_trainer.training.resources", ("trial_resources",)),
    "raylight_trainer.timeline_hooks": ("raylight_trainer.runtime.timeline_hooks", ("TrialEvents",)),
    "raylight_trainer.progress": ("raylight_trainer.console.progress", ("LiveTrials",)),
}


def register_old_paths() -> None:
    """Each old path answers with its new module (in sys.modules, which pickle's imports read first)."""
    for old, (new, _) in OLD_PATHS.items():
        if old not in sys.modules:
            sys.modules[old] = importlib.import_module(new)
