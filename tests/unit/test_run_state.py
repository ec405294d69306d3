"""When a run resumes and when it starts over."""

from __future__ import annotations

from pathlib import Path

import pytest

from raylight.api import TrialSpec
from raylight_trainer.runtime.storage import Storage
from raylight_trainer.training.run_state import claim_run_dir, save_state, spec_hash


@pytest.fixture(params=["directory", "s3"])
def runs(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """Where runs keep their state: a directory, or a bucket on a real S3-compatible store."""
    if request.param == "directory":
        return Storage.at(tmp_path)
    return Storage.at(request.getfixturevalue("s3_bucket"))


def test_interrupted_run_of_the_same_spec_resumes(runs: Storage) -> None:
    run_dir = runs / "job"
    digest = spec_hash(TrialSpec())
    save_state(run_dir, spec_hash=digest, run_id="r1")
    assert claim_run_dir(run_dir, digest, fresh=False)["run_id"] == "r1"
    assert run_dir.exists()


def test_a_recreated_resource_of_the_same_name_starts_over(runs: Storage) -> None:
    run_dir = runs / "job"
    digest = spec_hash(TrialSpec())
    save_state(run_dir, spec_hash=digest, run_id="r1", uid="uid-1")
    assert claim_run_dir(run_dir, digest, fresh=False, uid="uid-1")["run_id"] == "r1", "the same resource resumes"
    assert claim_run_dir(run_dir, digest, fresh=False, uid=None)["run_id"] == "r1", "raylight run has no uid"
    assert claim_run_dir(run_dir, digest, fresh=False, uid="uid-2") == {}, "another resource of that name"
    assert not run_dir.exists()


def test_finished_changed_or_fresh_runs_start_over_and_keep_old_results(runs: Storage) -> None:
    run_dir = runs / "job"
    digest = spec_hash(TrialSpec())
    other = spec_hash(TrialSpec.model_validate({"training": {"maxEpochs": 3}}))
    assert digest != other
    cases = [({"spec_hash": digest, "finished": True}, digest, False),
             ({"spec_hash": other}, digest, False),
             ({"spec_hash": digest}, digest, True)]
    for index, (state, wanted, fresh) in enumerate(cases):
        save_state(run_dir, **state)
        (run_dir / "marker").write_text(str(index))
        assert claim_run_dir(run_dir, wanted, fresh=fresh) == {}
        assert not run_dir.exists()
        moved = _moved(runs)
        assert any((p / "marker").read_text() == str(index) for p in moved)
    assert len(_moved(runs)) == 3


def _moved(runs: Storage) -> list[Storage]:
    from pyarrow.fs import FileSelector, FileType

    infos = runs.filesystem.get_file_info(FileSelector(runs.path))
    return [runs / info.base_name for info in infos
            if info.type == FileType.Directory and info.base_name.startswith("job.")]


def test_placement_fields_do_not_change_the_spec_hash() -> None:
    from raylight.api import TrainingJobSpec

    base = spec_hash(TrainingJobSpec())
    moved = TrainingJobSpec.model_validate({"suspend": True, "cluster": {"workers": {"replicas": 4}}})
    assert spec_hash(moved) == base, "suspending or resizing must resume, not start over"
    assert spec_hash(TrainingJobSpec.model_validate({"training": {"seed": 1}})) != base
