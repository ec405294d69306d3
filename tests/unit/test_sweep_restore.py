"""A resumed sweep gets its callbacks through Tune's private run config (`Tuner.restore` takes none):
pinned here on a real Tuner, so that a Ray upgrade that moves it fails this test, and a resumed
sweep says so instead of going on without its progress."""

from __future__ import annotations

from pathlib import Path

import pytest
from ray import tune

from raylight_trainer.tuning.sweep import replace_restored_callbacks


def _trainable(config: dict) -> None:
    tune.report({"score": 1.0})


def test_a_real_tuner_takes_the_callbacks_where_restore_leaves_them(tmp_path: Path) -> None:
    tuner = tune.Tuner(_trainable, run_config=tune.RunConfig(name="pinned", storage_path=str(tmp_path)))
    callback = tune.Callback()
    replace_restored_callbacks(tuner, [callback])
    assert tuner._local_tuner._run_config.callbacks == [callback]


def test_a_tuner_without_that_attribute_fails_loudly_naming_it() -> None:
    class Moved:
        _local_tuner = object()

    with pytest.raises(RuntimeError, match=r"_local_tuner\._run_config\.callbacks.*--fresh"):
        replace_restored_callbacks(Moved(), [])  # type: ignore[arg-type]
