"""A finished run whose checkpoints cannot be read back is not "a run without checkpoints": taken for
one, a storage hiccup made a TrainingJob succeed with no model logged and nothing saying why."""

from __future__ import annotations

from pathlib import Path

import pytest

from raylight_trainer.runtime.errors import CheckpointsUnreadable
from raylight_trainer.runtime.storage import Storage
from raylight_trainer.training.checkpoints import train_result


def test_a_run_directory_that_does_not_exist_has_no_record(tmp_path: Path) -> None:
    assert train_result(Storage.at(tmp_path / "never-trained-here")) is None


def test_a_torn_record_is_unreadable_and_the_error_names_the_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "train"
    (run_dir / "checkpoint_2026-12-07_00-00-00.000000").mkdir(parents=True)
    (run_dir / "checkpoint_manager_snapshot.json").write_text('{"checkpoint_results": [{"checkpoint"')  # cut short
    with pytest.raises(CheckpointsUnreadable, match=f"the checkpoints under {run_dir} cannot be read"):
        train_result(Storage.at(run_dir))


def test_a_job_whose_checkpoints_cannot_be_read_back_fails_naming_them(tmp_path: Path) -> None:
    """The end of a TrainingJob, on a real MLflow store, after a training that ended well: its
    checkpoints' record is torn, so the job fails, its run is FAILED, and the error names the path."""
    import time

    from mlflow.tracking import MlflowClient

    from raylight.api import TrainingJob, parse_resource
    from raylight.api.tags import TAG_ERROR
    from raylight_trainer.training.job import _finish_training_job
    from raylight_trainer.training.run_state import RunSettings

    job = parse_resource({"apiVersion": "raylight.dev/v1alpha1", "kind": "TrainingJob",
                          "metadata": {"name": "torn"}, "spec": {"model": {"preset": "vit-nano"}}})
    assert isinstance(job, TrainingJob)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = RunSettings(tracking_uri=uri, storage=Storage.at(tmp_path / "results"))
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("torn")
    run_id = client.create_run(experiment_id).info.run_id
    train_dir = tmp_path / "results" / job.metadata.namespace / "torn" / "train"
    train_dir.mkdir(parents=True)
    (train_dir / "checkpoint_manager_snapshot.json").write_text('{"checkpoint_results": [')

    result = _finish_training_job(job, settings, client, experiment_id, run_id, None, time.monotonic())
    assert result.state == "failed" and result.model_uri is None
    assert result.error is not None and f"the checkpoints under {train_dir} cannot be read" in result.error
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and "its model cannot be logged" in run.data.tags[TAG_ERROR]
