"""Where runs keep their state (checkpoints, Tune's experiment, the resume file): a directory (a local
disk, or a volume every pod mounts) or an object store (`s3://bucket/prefix`, `gs://...`).

Both go through pyarrow's filesystems, as Ray Train and Tune use them, so a run hands Ray the same
filesystem it reads its own state with. Object-store credentials come from the environment, as the
AWS SDKs read it (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for a store in the
cluster, AWS_REGION); on a cluster the operator fills it from the Secret `spec.cluster.storageSecret`.

Light on purpose (pyarrow only, imported when first used): the driver reads a path's errors before
it loads torch.
"""

from __future__ import annotations

import os
import posixpath
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from raylight.api.cluster import is_object_store
from raylight.api.pods import STORAGE_SECRET_ENV

from .errors import StorageError

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem


@dataclass(frozen=True)
class Storage:
    """A place for a run's state: an absolute local path or an object-store URI (plain data: it goes
    to trials and workers as such, and each opens its own filesystem)."""

    uri: str

    @classmethod
    def at(cls, location: str | Path) -> Storage:
        """Storage at a path (made absolute) or an object-store URI (kept, without a trailing /)."""
        text = str(location)
        if is_object_store(text):
            parsed = urlparse(text)
            if not parsed.netloc:
                raise StorageError(f"{text!r} names no bucket: write {parsed.scheme}://BUCKET/PREFIX")
            return cls(text.rstrip("/"))
        if "://" in text:
            raise StorageError(f"{text!r}: storage is a directory or an s3:// or gs:// URI")
        return cls(str(Path(text).expanduser().resolve()))

    @property
    def remote(self) -> bool:
        return is_object_store(self.uri)

    @property
    def filesystem(self) -> FileSystem:
        scheme = urlparse(self.uri).scheme if self.remote else "file"
        # Keyed by what configures it too: a process whose environment changes gets a new one.
        return _filesystem(scheme, *(os.environ.get(name) for name in _CONFIGURING_ENV))

    @property
    def path(self) -> str:
        """The path inside `filesystem` ("bucket/prefix" for an object store)."""
        if not self.remote:
            return self.uri
        parsed = urlparse(self.uri)
        return f"{parsed.netloc}{parsed.path}".rstrip("/")

    @property
    def bucket(self) -> str:
        return urlparse(self.uri).netloc

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    def __truediv__(self, part: str) -> Storage:
        return Storage(f"{self.uri}/{part.strip('/')}")

    def __str__(self) -> str:
        return self.uri

    @property
    def ray_filesystem(self) -> FileSystem | None:
        """The storage_filesystem Ray's RunConfig, Tuner.restore and Result take with `path`: the object
        store's (None for a directory: Ray opens local paths itself)."""
        return self.filesystem if self.remote else None

    def local_path(self) -> Path | None:
        return None if self.remote else Path(self.uri)

    def exists(self) -> bool:
        from pyarrow.fs import FileType

        with explained(self):
            return bool(self.filesystem.get_file_info(self.path).type != FileType.NotFound)

    def read_text(self) -> str | None:
        """The file's text, or None where there is none."""
        with explained(self):
            try:
                with self.filesystem.open_input_stream(self.path) as stream:
                    return bytes(stream.read()).decode()
            except FileNotFoundError:
                return None

    def write_text(self, text: str) -> None:
        with explained(self):
            self.filesystem.create_dir(posixpath.dirname(self.path), recursive=True)
            with self.filesystem.open_output_stream(self.path) as stream:
                stream.write(text.encode())

    def move_aside(self) -> Storage | None:
        """Move this directory to a free name stamped with the time (kept, never mixed with what comes
        next); None where there was nothing."""
        if not self.exists():
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target, counter = self.sibling(f"{self.name}.{stamp}"), 1
        while target.exists():
            counter += 1
            target = self.sibling(f"{self.name}.{stamp}-{counter}")
        with explained(self):
            if self.remote:
                # Object stores have no rename: copy every object, then delete the originals.
                from pyarrow.fs import copy_files

                copy_files(self.path, target.path, source_filesystem=self.filesystem,
                           destination_filesystem=self.filesystem)
                self.filesystem.delete_dir(self.path)
            else:
                self.filesystem.move(self.path, target.path)
        return target

    @property
    def parent(self) -> Storage:
        return Storage(self.uri.rsplit("/", 1)[0])

    def sibling(self, name: str) -> Storage:
        return self.parent / name

    def bucket_missing(self) -> bool:
        """True for an object store whose bucket does not exist."""
        from pyarrow.fs import FileType

        with explained(self):
            return self.remote and self.filesystem.get_file_info(self.bucket).type == FileType.NotFound

    def check_writable(self, field: str) -> None:
        """Fail early, naming `field`, where runs could not keep their state here: an object store
        that cannot be reached, refuses the credentials, or lacks the bucket; a directory that cannot
        be made. A probe object is written and deleted (read-only credentials fail here, not after
        the first epoch)."""
        probe = self / f".raylight-write-check-{os.getpid()}"
        try:
            if self.bucket_missing():
                raise StorageError(f"{self.uri}: the bucket {self.bucket!r} does not exist: create it, or "
                                   f"set {field} to a bucket that does ({credentials_source()})")
            probe.write_text("")
            with explained(probe):
                probe.filesystem.delete_file(probe.path)
        except StorageError as exc:
            raise StorageError(f"{field}: cannot keep the run's state at {exc}") from exc


def credentials_source() -> str:
    """Where this process's object-store credentials come from, for error messages."""
    secret = os.environ.get(STORAGE_SECRET_ENV)
    if secret:
        return f"credentials from the Secret {secret!r} (spec.cluster.storageSecret)"
    return ("credentials from the environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, and AWS_ENDPOINT_URL "
            "for a store other than AWS")


@contextmanager
def explained(storage: Storage) -> Iterator[None]:
    """Turns pyarrow's object-store errors into a StorageError naming the URI and the credentials
    (a missing object stays a FileNotFoundError: often expected, its callers handle it)."""
    try:
        yield
    except (StorageError, FileNotFoundError):
        raise
    except OSError as exc:
        if not storage.remote:
            raise
        raise StorageError(f"{storage.uri}: {describe_store_error(exc)} ({credentials_source()})") from exc


def describe_store_error(exc: BaseException) -> str:
    """A reason a user can act on, from an AWS SDK error as pyarrow words it."""
    text = str(exc)
    if any(code in text for code in ("ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                                     "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "Forbidden")):
        return "access denied: check the access key and secret key, and that they may read and write this bucket"
    if "NO_SUCH_BUCKET" in text or "NoSuchBucket" in text:
        return "the bucket does not exist: create it, or name one that does"
    if any(code in text for code in ("NETWORK_CONNECTION", "Couldn't connect", "curlCode", "Connection refused",
                                     "Could not resolve", "Timeout")):
        endpoint = object_store_endpoint() or "the provider's default endpoint"
        return f"cannot reach the object store at {endpoint}: check AWS_ENDPOINT_URL and that the store is up"
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def object_store_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


_CONFIGURING_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION",
                    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE")


@cache
def _filesystem(scheme: str, *_configuration: str | None) -> FileSystem:
    """One filesystem per scheme and process (pyarrow's S3 client is thread-safe and costly to make)."""
    from pyarrow import fs

    if scheme == "file":
        return fs.LocalFileSystem()
    if scheme == "s3":
        options: dict[str, Any] = {
            # Without a region the SDK asks the cloud's metadata service: seconds of timeouts off the cloud.
            "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            "connect_timeout": 10,
            "request_timeout": 120,
        }
        endpoint = object_store_endpoint()
        if endpoint:
            options["endpoint_override"] = endpoint
            # A store in the cluster (MinIO, versitygw, SeaweedFS) serves buckets as paths, not as
            # host names, and may well not have TLS.
            options["force_virtual_addressing"] = False
        return fs.S3FileSystem(**options)
    assert scheme == "gs", scheme
    return fs.GcsFileSystem()  # Google's default credentials (a service account, GOOGLE_APPLICATION_CREDENTIALS)
