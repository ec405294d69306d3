"""Datasets on a real S3-compatible store (versitygw): read from a local copy fetched once per cache,
fetched again when the store's copy changes, evicted to stay under the cache's size, and errors that
name the URI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from raylight.api import DataSpec
from raylight.api.pods import DATA_CACHE_ENV, DATA_CACHE_SIZE_ENV, STORAGE_SECRET_ENV
from raylight_trainer.data import cache as dataset_cache
from raylight_trainer.data.datasets import load_data
from raylight_trainer.runtime.errors import DatasetError
from raylight_trainer.runtime.storage import Storage
from tests.unit.test_data import check, write_cifar10, write_imagefolder


def upload(local: Path, uri: str) -> None:
    from pyarrow.fs import LocalFileSystem, copy_files

    store = Storage.at(uri)
    copy_files(str(local), store.path, source_filesystem=LocalFileSystem(), destination_filesystem=store.filesystem)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(DATA_CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def fetches(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URIs fetched from the store (the real fetch, counted)."""
    seen: list[str] = []
    real = dataset_cache._fetch

    def counted(store: Storage, *args: object) -> None:
        seen.append(store.uri)
        real(store, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(dataset_cache, "_fetch", counted)
    return seen


def test_cifar10_from_the_store_is_the_local_dataset_and_is_fetched_once(
        tmp_path: Path, s3_bucket: str, cache: Path, fetches: list[str]) -> None:
    write_cifar10(tmp_path / "local")
    upload(tmp_path / "local", f"{s3_bucket}/datasets/cifar")
    spec = DataSpec(dataset="cifar10", path=f"{s3_bucket}/datasets/cifar/")
    remote = load_data(spec, 32)
    local = load_data(DataSpec(dataset="cifar10", path=str(tmp_path / "local")), 32)
    check(remote, 32, 10, 3)
    assert remote.class_names == local.class_names and len(remote.train) == len(local.train) == 100
    assert torch.equal(remote.val[3][0], local.val[3][0])
    load_data(spec, 32)
    assert fetches == [f"{s3_bucket}/datasets/cifar"], "the second load reads the copy"
    assert len(list(cache.iterdir())) == 2  # the copy and the lock


def test_imagefolder_under_a_data_dir_on_the_store_and_a_changed_store_copy_is_fetched_again(
        tmp_path: Path, s3_bucket: str, cache: Path, fetches: list[str]) -> None:
    write_imagefolder(tmp_path / "pets")
    upload(tmp_path / "pets", f"{s3_bucket}/datasets/pets")
    spec = DataSpec(dataset="imagefolder", path="pets")  # relative: under --data-dir s3://.../datasets
    first = load_data(spec, 16, f"{s3_bucket}/datasets")
    check(first, 16, 2, 3)
    write_imagefolder(tmp_path / "more", classes=("bird",))
    upload(tmp_path / "more", f"{s3_bucket}/datasets/pets")
    second = load_data(spec, 16, f"{s3_bucket}/datasets")
    assert second.class_names == ["bird", "cat", "dog"] and len(fetches) == 2


def test_the_least_recently_used_copy_makes_room_and_one_too_large_names_the_setting(
        tmp_path: Path, s3_bucket: str, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("a", "b"):
        write_cifar10(tmp_path / name, per_batch=200)  # ~3.7 MB each
        upload(tmp_path / name, f"{s3_bucket}/{name}")
    monkeypatch.setenv(DATA_CACHE_SIZE_ENV, "6Mi")
    load_data(DataSpec(dataset="cifar10", path=f"{s3_bucket}/a"), 8)
    load_data(DataSpec(dataset="cifar10", path=f"{s3_bucket}/b"), 8)
    kept = {dataset_cache._read_meta(entry).get("uri") for entry in cache.iterdir()} - {None}
    assert kept == {f"{s3_bucket}/b"}, "a made room for b"
    monkeypatch.setenv(DATA_CACHE_SIZE_ENV, "1Mi")
    with pytest.raises(DatasetError, match=r"more than the data cache's 1.0 MiB: raise --data-cache-size"):
        load_data(DataSpec(dataset="cifar10", path=f"{s3_bucket}/a"), 8)


def test_a_malformed_file_is_named_by_its_uri(tmp_path: Path, s3_bucket: str, cache: Path) -> None:
    write_cifar10(tmp_path / "local")
    (tmp_path / "local" / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"not a pickle")
    upload(tmp_path / "local", f"{s3_bucket}/cifar")
    with pytest.raises(DatasetError) as info:
        load_data(DataSpec(dataset="cifar10", path=f"{s3_bucket}/cifar"), 32)
    assert f"{s3_bucket}/cifar/cifar-10-batches-py/data_batch_2" in str(info.value)
    assert str(cache) not in str(info.value), "the cache's copy is an implementation detail"


@pytest.mark.parametrize("where", ["no objects", "no bucket", "refused"])
def test_a_dataset_the_store_cannot_give_is_named_with_the_credentials(
        where: str, s3_bucket: str, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = {"no bucket": "s3://no-such-bucket/cifar"}.get(where, f"{s3_bucket}/cifar")
    monkeypatch.setenv(STORAGE_SECRET_ENV, "team-s3")  # as in a Ray pod: the operator names the Secret
    if where == "refused":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(DatasetError) as info:
        load_data(DataSpec(dataset="cifar10", path=uri), 32)
    message = str(info.value)
    assert message.startswith(f"data.path {uri}: "), message
    expected = {"no objects": "no objects under it", "no bucket": "the bucket 'no-such-bucket' does not exist",
                "refused": "access denied"}[where]
    assert expected in message and "the Secret 'team-s3' (spec.cluster.storageSecret)" in message
