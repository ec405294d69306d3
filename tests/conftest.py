"""Shared fixtures: a real local Ray instance and a real MLflow tracking server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from raylight_trainer.driver import free_port


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a SQLite backend and served artifacts; a test may stop it
    and start it again on the same port and store (an outage)."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root, self.port = root, port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.root / "server.log").open("a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
            start_new_session=True,  # its own process group: stop() ends the server's workers too
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mlflow server did not start: {(self.root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)  # the group outlives a leader that died
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=20)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 with a SQLite backend and served artifacts."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    server.start()
    yield server.uri
    server.stop()


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """A real local Ray with 2 CPUs (the CI machine's size), dashboard on for Ray Train's cleaner.

    Per module: tests that start Ray instances of their own must find none running."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray

    from raylight_trainer.driver import start_ray

    start_ray(num_cpus=2, verbose=False)
    yield
    ray.shutdown()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The node's tests last: its Ray pods are processes on this host, and a local Ray started
    by another test while they run would see them (and refuse to start a sweep)."""
    items.sort(key=lambda item: "/tests/node/" in str(item.fspath))


_SESSION = pytest.StashKey[pytest.Session]()


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_SESSION] = session


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the test process without the interpreter's teardown, once pytest has reported.

    This process has loaded Ray's core worker, torch, gRPC and Arrow; after a CI run in which
    every test passed, their native teardown at exit once aborted it (a glibc heap assertion),
    turning a green run red. The results are written by now, so nothing is lost by skipping it;
    PYTHONFAULTHANDLER (tests/run) prints every thread's stack should a crash come earlier, and
    RAYLIGHT_TEST_NORMAL_EXIT=1 keeps the teardown, to chase that crash."""
    session = config.stash.get(_SESSION, None)
    if session is None or os.environ.get("RAYLIGHT_TEST_NORMAL_EXIT"):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(session.exitstatus))
