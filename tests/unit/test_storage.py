"""Run state on a directory and on a real S3-compatible store (versitygw, tests/objectstore): the same
calls, and errors that name the URI and where the credentials came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from raylight.api.pods import STORAGE_SECRET_ENV
from raylight_trainer.runtime.errors import StorageError
from raylight_trainer.runtime.storage import Storage


def test_locations_parse_to_a_directory_or_a_bucket_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Storage.at("results").uri == str(tmp_path / "results")
    store = Storage.at("s3://bucket/some/prefix/")
    assert store.uri == "s3://bucket/some/prefix" and store.remote
    assert store.path == "bucket/some/prefix" and store.bucket == "bucket"
    assert (store / "ns" / "job").uri == "s3://bucket/some/prefix/ns/job"
    assert (store / "job").parent == store and store.sibling("other").uri == "s3://bucket/some/other"
    assert Storage.at(tmp_path).ray_filesystem is None and store.ray_filesystem is not None
    with pytest.raises(StorageError, match="names no bucket"):
        Storage.at("s3:///prefix")
    with pytest.raises(StorageError, match="s3:// or gs://"):
        Storage.at("hdfs://namenode/results")


@pytest.fixture(params=["directory", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "directory":
        return Storage.at(tmp_path / "runs")
    return Storage.at(f"{request.getfixturevalue('s3_bucket')}/runs")


def test_text_round_trips_and_a_missing_file_reads_as_none(storage: Storage) -> None:
    state = storage / "ns" / "job" / "state.json"
    assert state.read_text() is None and not state.exists()
    state.write_text('{"a": 1}')
    assert state.read_text() == '{"a": 1}' and state.exists()


def test_moving_aside_keeps_everything_under_a_new_name(storage: Storage) -> None:
    run_dir = storage / "ns" / "job"
    assert run_dir.move_aside() is None, "nothing there: nothing moved"
    (run_dir / "a" / "b.txt").write_text("first")
    (run_dir / "c.txt").write_text("second")
    moved = run_dir.move_aside()
    assert moved is not None and moved.name.startswith("job.")
    assert not run_dir.exists()
    assert (moved / "a" / "b.txt").read_text() == "first" and (moved / "c.txt").read_text() == "second"
    (run_dir / "c.txt").write_text("third")
    again = run_dir.move_aside()
    assert again is not None and again != moved, "a second move in the same second takes another name"
    assert (again / "c.txt").read_text() == "third" and (moved / "c.txt").read_text() == "second"


def test_a_writable_store_passes_the_check(storage: Storage) -> None:
    storage.check_writable("--storage-path")
    assert not any(p.name.startswith(".raylight-write-check") for p in _listing(storage)), "the probe is deleted"


def _listing(storage: Storage) -> list[Path]:
    from pyarrow.fs import FileSelector

    infos = storage.filesystem.get_file_info(FileSelector(storage.path, recursive=True, allow_not_found=True))
    return [Path(info.path) for info in infos]


def test_a_missing_bucket_is_named_with_the_field_and_the_credentials(
        object_store: object, s3_bucket: str) -> None:
    with pytest.raises(StorageError) as info:
        Storage.at("s3://no-such-bucket/runs").check_writable("--storage-path")
    message = str(info.value)
    assert message.startswith("--storage-path: ") and "s3://no-such-bucket/runs" in message
    assert "the bucket 'no-such-bucket' does not exist" in message and "AWS_ACCESS_KEY_ID" in message


def test_refused_credentials_name_the_secret_on_a_cluster(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    monkeypatch.setenv(STORAGE_SECRET_ENV, "team-s3")
    with pytest.raises(StorageError) as info:
        Storage.at(f"{s3_bucket}/runs").check_writable("spec.cluster.storagePath")
    message = str(info.value)
    assert message.startswith("spec.cluster.storagePath: ") and f"{s3_bucket}/runs" in message
    assert "access denied" in message and "the Secret 'team-s3' (spec.cluster.storageSecret)" in message


def test_a_store_out_of_reach_names_its_endpoint(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from raylight_trainer.runtime.ports import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    with pytest.raises(StorageError, match=f"cannot reach the object store at {endpoint}"):
        Storage.at(f"{s3_bucket}/runs").check_writable("--storage-path")


def test_errors_name_the_spec_field_in_the_operators_pods_and_the_option_locally(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from raylight.api.pods import RUN_BY_OPERATOR_ENV
    from raylight_trainer.runtime.placement import storage_field

    monkeypatch.delenv(RUN_BY_OPERATOR_ENV, raising=False)
    assert storage_field() == "--storage-path"
    monkeypatch.setenv(RUN_BY_OPERATOR_ENV, "true")  # as the builder sets it in every Ray container
    assert storage_field() == "spec.cluster.storagePath"
