"""Datasets on object storage (data.path s3://...), and weights to start from (model.pretrained
s3://...), read from a local copy fetched once per cache.

Every process that loads a dataset (the trials, the DDP ranks, the attributions) asks for it here.
The first fetches it into the cache under a lock; the others, on the same node and cache, wait for
that fetch and read the copy. A copy is kept while the store's listing (names, sizes, modification
times) is unchanged, so a dataset replaced in the store is fetched again. The cache holds at most
its size: the datasets used least recently make room.

The cache is RAYLIGHT_DATA_CACHE (default ~/.cache/raylight/datasets) and its size
RAYLIGHT_DATA_CACHE_SIZE (default 50Gi): on a cluster the operator mounts spec.cluster.dataCache
there; `raylight run` takes --data-cache and --data-cache-size.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import posixpath
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raylight.api.cluster import quantity_bytes
from raylight.api.pods import DATA_CACHE_ENV, DATA_CACHE_SIZE_ENV

from ..runtime.errors import DatasetError, PretrainedError, StorageError
from ..runtime.placement import setting
from ..runtime.storage import Storage, credentials_source, explained

DEFAULT_CACHE_SIZE = "50Gi"
_META = "raylight-dataset.json"


def cache_dir() -> Path:
    return Path(os.environ.get(DATA_CACHE_ENV) or Path.home() / ".cache" / "raylight" / "datasets")


def cache_limit() -> int:
    return quantity_bytes(os.environ.get(DATA_CACHE_SIZE_ENV) or DEFAULT_CACHE_SIZE)


def _size_setting() -> str:
    return setting("spec.cluster.dataCache.size", "--data-cache-size")


def cached_dataset(uri: str) -> Path:
    """The local copy of the dataset under `uri` (fetched now if the cache lacks it or it changed)."""
    return _cached(Storage.at(uri), DATASET)


def cached_file(uri: str, field: str = "spec.model.pretrained") -> Path:
    """The local copy of the one object at `uri` (weights to start from), cached as datasets are:
    fetched by the first process of a node, read by the others, fetched again once replaced."""
    store = Storage.at(uri)
    copy = _cached(store, _Cached(field, PretrainedError, single=True))
    return copy / posixpath.basename(store.path)


def check_file(uri: str, field: str) -> None:
    """That one object is at `uri` (weights to start from), without fetching it."""
    from pyarrow.fs import FileType

    store = Storage.at(uri)
    with store_errors(store, _Cached(field, PretrainedError, single=True)):
        found = store.filesystem.get_file_info(store.path).type == FileType.File
    if not found:
        raise PretrainedError(f"{field} {uri}: no object there; upload the weights there or fix {field}")


@dataclass(frozen=True)
class _Cached:
    """What is cached: the field that named it (for errors) and whether it is one object or a prefix."""

    field: str
    error: type[ValueError]
    single: bool = False


DATASET = _Cached("data.path", DatasetError)


def _cached(store: Storage, what: _Cached) -> Path:
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    target = root / hashlib.sha256(store.uri.encode()).hexdigest()[:16]
    with locked(root / ".lock"):
        listing = _listing(store, what)
        signature = hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()
        meta = _read_meta(target)
        if meta.get("signature") == signature and (target / "data").is_dir():
            os.utime(target / _META)  # recently used: evicted last
            return target / "data"
        total = sum(size for _, size, _ in listing)
        limit = cache_limit()
        if total > limit:
            raise what.error(f"{what.field} {store.uri} holds {_gib(total)}, more than the data cache's "
                             f"{_gib(limit)}: raise {_size_setting()}")
        shutil.rmtree(target, ignore_errors=True)
        _make_room(root, total, limit)
        _fetch(store, target, listing, signature, what)
    return target / "data"


def _listing(store: Storage, what: _Cached) -> list[tuple[str, int, int]]:
    """(relative name, bytes, modification time in ns) of every object under the URI (or of the one
    object at it)."""
    from pyarrow.fs import FileSelector, FileType

    with store_errors(store, what):
        if what.single:
            infos = [store.filesystem.get_file_info(store.path)]
        else:
            infos = store.filesystem.get_file_info(FileSelector(store.path, recursive=True, allow_not_found=True))
    prefix = store.path.rstrip("/") + "/"
    files = [(info.path.removeprefix(prefix), int(info.size or 0), int(info.mtime_ns or 0))
             for info in infos if info.type == FileType.File]
    if not files:
        with store_errors(store, what):
            bucket_missing = store.bucket_missing()
        missing = "no object there" if what.single else "no objects under it"
        what_is_wrong = f"the bucket {store.bucket!r} does not exist" if bucket_missing else missing
        upload = "the weights" if what.single else "the dataset"
        raise what.error(f"{what.field} {store.uri}: {what_is_wrong}; upload {upload} there or fix {what.field} "
                         f"({credentials_source()})")
    return sorted(files)


def _fetch(store: Storage, target: Path, listing: list[tuple[str, int, int]], signature: str,
           what: _Cached) -> None:
    """Copy every object into target/data, atomically: a fetch cut short leaves no copy behind."""
    from pyarrow.fs import LocalFileSystem, copy_files

    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "data").mkdir(parents=True)
    destination = partial / "data" / posixpath.basename(store.path) if what.single else partial / "data"
    started = time.monotonic()
    try:
        with store_errors(store, what):
            copy_files(store.path, str(destination), source_filesystem=store.filesystem,
                       destination_filesystem=LocalFileSystem(), use_threads=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    meta = {"uri": store.uri, "signature": signature, "objects": len(listing),
            "bytes": sum(size for _, size, _ in listing), "seconds": round(time.monotonic() - started, 3)}
    (partial / _META).write_text(json.dumps(meta))
    partial.rename(target)


@contextmanager
def store_errors(store: Storage, what: _Cached = DATASET) -> Iterator[None]:
    """The store's errors (refused keys, no bucket, out of reach) as the error of the field that named it."""
    try:
        with explained(store):
            yield
    except StorageError as exc:
        raise what.error(f"{what.field} {exc}") from exc


def _read_meta(target: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((target / _META).read_text()))
    except (OSError, ValueError):
        return {}


def _make_room(root: Path, needed: int, limit: int) -> None:
    """Evict the copies used least recently until `needed` more bytes fit under `limit`."""
    copies = []
    for entry in root.iterdir():
        meta = _read_meta(entry)
        if meta:
            copies.append(((entry / _META).stat().st_mtime, int(meta.get("bytes", 0)), entry))
        elif entry.name.endswith(".partial"):
            shutil.rmtree(entry, ignore_errors=True)  # a fetch killed midway (the lock is ours now)
    used = sum(size for _, size, _ in copies)
    for _, size, entry in sorted(copies):
        if used + needed <= limit:
            break
        shutil.rmtree(entry, ignore_errors=True)
        used -= size


@contextmanager
def locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, even if the process dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"
