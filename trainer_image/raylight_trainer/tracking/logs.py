"""A run's console output, kept in MLflow as it grows: it outlives the Ray cluster (KubeRay deletes
it, and its pods' logs, when the run ends) and is read back by `raylight logs`.

The copy is taken at the file-descriptor level, so it holds everything the process writes: our
lines, Lightning's and Ray's messages, warnings from native code, the traceback of a failure.
What was written still goes where it went (Ray's log files, the pod's log).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from raylight.api.tags import DRIVER_LOG, LOG_ARTIFACT_DIR

log = logging.getLogger(__name__)

UPLOAD_INTERVAL_S = 10.0
# A resumed run continues the log its earlier attempt left in MLflow, after this line.
RESUMED_MARKER = b"\n----- resumed -----\n"


class OutputTee:
    """Copies what this process writes to stdout and stderr (fds 1 and 2) into a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._saved: dict[int, int] = {}
        self._pumps: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._copy: Any = None

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._copy = open(self.path, "ab")  # noqa: SIM115 (closed by stop)
        _flush_python_streams()
        for fd in (1, 2):
            read_end, write_end = os.pipe()
            self._saved[fd] = os.dup(fd)
            os.dup2(write_end, fd)
            os.close(write_end)
            pump = threading.Thread(target=self._pump, args=(read_end, self._saved[fd]), daemon=True,
                                    name=f"raylight-tee-{fd}")
            pump.start()
            self._pumps.append(pump)

    def _pump(self, read_end: int, original: int) -> None:
        while chunk := os.read(read_end, 65536):
            _write_all(original, chunk)
            with self._lock:
                self._copy.write(chunk)
                self._copy.flush()
        os.close(read_end)

    def write_line(self, line: str) -> None:
        """A line written to stdout and into the copy at once, not through the pipe: the copy
        holds it as soon as this returns (a pumped line may still be on its way)."""
        data = (line + "\n").encode()
        _flush_python_streams()
        with self._lock:
            _write_all(self._saved.get(1, 1), data)
            self._copy.write(data)
            self._copy.flush()

    def stop(self) -> None:
        """Puts fds 1 and 2 back; the pumps end when no process holds the pipes any more
        (a forked data-loader worker may for a moment)."""
        _flush_python_streams()
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)
        for pump in self._pumps:
            pump.join(timeout=2.0)
        if not any(pump.is_alive() for pump in self._pumps):
            for saved in self._saved.values():
                os.close(saved)
            self._copy.close()
        self._saved, self._pumps = {}, []


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except OSError:  # where it went is gone (a closed pipe): the copy is still kept
            return


def say(line: str) -> None:
    """A line of ours on stdout. Not print(): Ray Train patches it in workers to also log each
    line, which the kept log would then hold twice."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _flush_python_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


class LogKeeper:
    """Uploads a growing log file as the artifact `logs/NAME` of an MLflow run, every
    UPLOAD_INTERVAL_S while it grows and once at the end. Upload problems are logged, never raised:
    losing a log must not fail a run."""

    def __init__(self, path: Path, artifact_name: str, interval: float = UPLOAD_INTERVAL_S) -> None:
        self.path, self.artifact_name, self.interval = path, artifact_name, interval
        self.tracking_uri: str | None = None
        self.run_id: str | None = None
        self._earlier = b""
        self._uploaded_size = -1
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.tee: OutputTee | None = None  # set while the output is being copied

    def say(self, line: str) -> None:
        """A line of our own in the log, uploaded at once (EpochLine: before the epoch is reported,
        since a trial that ASHA stops there is killed without a later upload)."""
        if self.tee is not None:
            self.tee.write_line(line)
        else:
            say(line)
        self.upload()

    def attach(self, tracking_uri: str, run_id: str) -> None:
        """From now on, upload to this run; what an earlier attempt of the run kept comes first."""
        with self._lock:
            if (self.tracking_uri, self.run_id) == (tracking_uri, run_id):
                return
            self.tracking_uri, self.run_id = tracking_uri, run_id
            self._earlier = self._download_earlier()
            self._uploaded_size = -1
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, daemon=True, name="raylight-log-upload")
            self._thread.start()

    def _download_earlier(self) -> bytes:
        from mlflow.tracking import MlflowClient

        assert self.tracking_uri and self.run_id
        client = MlflowClient(self.tracking_uri)
        try:
            names = {Path(f.path).name for f in client.list_artifacts(self.run_id, LOG_ARTIFACT_DIR)}
            if self.artifact_name not in names:
                return b""
            # No progress bar: it would be written into the very log being continued.
            with tempfile.TemporaryDirectory() as scratch, _environment(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"):
                local = client.download_artifacts(self.run_id, f"{LOG_ARTIFACT_DIR}/{self.artifact_name}", scratch)
                return Path(local).read_bytes() + RESUMED_MARKER
        except Exception as exc:
            log.warning("could not read the earlier %s of run %s: %s", self.artifact_name, self.run_id, exc)
            return b""

    def _loop(self) -> None:
        while not self._stopped.wait(self.interval):
            self.upload()

    def upload(self) -> None:
        from mlflow.tracking import MlflowClient

        with self._lock:
            if not self.run_id or not self.tracking_uri:
                return
            _flush_python_streams()
            try:
                current = self.path.read_bytes()
            except OSError:
                return
            if len(current) == self._uploaded_size:
                return
            try:
                with tempfile.TemporaryDirectory() as scratch:
                    snapshot = Path(scratch) / self.artifact_name
                    snapshot.write_bytes(self._earlier + current)
                    MlflowClient(self.tracking_uri).log_artifact(self.run_id, str(snapshot), LOG_ARTIFACT_DIR)
                self._uploaded_size = len(current)
            except Exception as exc:
                log.warning("could not keep %s in MLflow run %s: %s", self.artifact_name, self.run_id, exc)

    def close(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=30.0)
        self.upload()


@contextlib.contextmanager
def kept_output(artifact_name: str, tracking_uri: str | None = None, run_id: str | None = None,
                directory: Path | None = None) -> Iterator[LogKeeper]:
    """Everything the process writes inside the block, kept as the artifact `logs/NAME` of a run
    (given now, or later with `attach`). An exception leaving the block is written out first, so
    the log ends with its traceback."""
    scratch = tempfile.mkdtemp(prefix="raylight-log-", dir=directory)
    path = Path(scratch) / artifact_name
    tee, keeper = OutputTee(path), LogKeeper(path, artifact_name)
    tee.start()
    keeper.tee = tee
    failure = ""
    try:
        if tracking_uri and run_id:
            keeper.attach(tracking_uri, run_id)
        yield keeper
    except Exception:
        failure = traceback.format_exc()
        raise
    finally:
        keeper.tee = None
        tee.stop()  # what was written before (buffered stdout included) is in the copy now
        if failure:  # after it, and last: not raced by lines still in the pipes
            _write_all(2, failure.encode())
            with contextlib.suppress(OSError), open(path, "ab") as copy:
                copy.write(failure.encode())
        keeper.close()
        with contextlib.suppress(OSError):
            path.unlink()
            os.rmdir(scratch)


_driver: LogKeeper | None = None


@contextlib.contextmanager
def kept_driver_output() -> Iterator[None]:
    """The driver's output (the trainer image's entry point): kept on the run that
    `keep_driver_log` names once the driver knows it."""
    global _driver
    if os.isatty(1):  # someone's terminal: it keeps its own output, and a pipe would end its live display
        yield
        return
    with kept_output(DRIVER_LOG) as keeper:
        _driver = keeper
        try:
            yield
        finally:
            _driver = None


def keep_driver_log(tracking_uri: str, run_id: str) -> None:
    """Keep the driver's output on this run (a no-op outside the trainer image: a local run's
    output is the user's terminal)."""
    if _driver is not None:
        _driver.attach(tracking_uri, run_id)
