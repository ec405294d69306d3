"""Shared fixtures: a real local Ray instance and a real MLflow tracking server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from raylight_trainer.runtime.ports import free_port
from tests.node import bring_up as node_bring_up

# Each test's wall time by area, for tests/run's budget table (tests/budget.py); tests/run --quick's
# selection (tests/quick.py).
pytest_plugins = ["tests.budget", "tests.quick"]


def stop_group(process: subprocess.Popen[bytes] | None) -> None:
    """Stop a server started in a session of its own: SIGTERM to its process group (which outlives a
    leader that died), SIGKILL after 20 s."""
    if process is None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a SQLite backend and served artifacts; a test may stop it
    and start it again on the same port and store (an outage)."""

    def __init__(self, root: Path, port: int | None = None, artifacts: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.root, self.port = root, port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        # Where it keeps artifacts (default: a folder of its root), and its own environment's additions.
        self.artifacts, self.env = artifacts or str(root / "artifacts"), env or {}

    def start(self) -> None:
        log = (self.root / "server.log").open("a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", self.artifacts, "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.root, env={**os.environ, **self.env},
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
        stop_group(self.process)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 with a SQLite backend and served artifacts."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    server.start()
    yield server.uri
    server.stop()


class ObjectStore:
    """A real S3-compatible server (versitygw's POSIX gateway, built from its pinned Go module by
    tests/objectstore/build) on 127.0.0.1, serving the folders under `root` as buckets."""

    ACCESS_KEY, SECRET_KEY = "raylight-test", "raylight-test-secret"

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = subprocess.run([str(Path(__file__).parent / "objectstore" / "build")], check=True,
                                capture_output=True, text=True).stdout.strip()
        (self.root / "buckets").mkdir(exist_ok=True)
        log = (self.root / "server.log").open("a")
        self.process = subprocess.Popen(
            [binary, "--port", f"127.0.0.1:{self.port}", "--access", self.ACCESS_KEY, "--secret", self.SECRET_KEY,
             "posix", str(self.root / "buckets")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"versitygw did not start: {(self.root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        stop_group(self.process)

    def env(self, secret_key: str | None = None) -> dict[str, str]:
        """The environment a client of this store is given (as the operator fills it from a Secret)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": secret_key or self.SECRET_KEY, "AWS_REGION": "us-east-1"}

    def make_bucket(self) -> str:
        """A new empty bucket's name."""
        from pyarrow.fs import S3FileSystem

        name = f"bucket-{uuid.uuid4().hex[:12]}"
        S3FileSystem(access_key=self.ACCESS_KEY, secret_key=self.SECRET_KEY, endpoint_override=self.endpoint,
                     region="us-east-1", allow_bucket_creation=True).create_dir(name)
        return name


@pytest.fixture(scope="session")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    store = ObjectStore(tmp_path_factory.mktemp("objectstore"))
    store.start()
    yield store
    store.stop()


@pytest.fixture
def s3_bucket(object_store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> str:
    """s3:// of a new, empty bucket on the real object store, with this process's environment (which
    Ray's local workers inherit) holding its endpoint and credentials."""
    for name, value in object_store.env().items():
        monkeypatch.setenv(name, value)
    return f"s3://{object_store.make_bucket()}"


# boto3, which MLflow's S3 artifact store needs, pins python-dateutil below 3 and the kubernetes
# client needs 3: it cannot share the venv. The server alone gets it, from a folder of its own put
# first on its PYTHONPATH (the trainer and the CLI upload through the server and need none).
BOTO3 = "boto3==1.44.8"


def boto3_path() -> Path:
    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "raylight" / BOTO3.replace("==", "-")
    if not (folder / "complete").exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-warn-conflicts", "--target",
                        str(folder), BOTO3], check=True)
        (folder / "complete").touch()
    return folder


@pytest.fixture(scope="session")
def mlflow_server_on_s3(tmp_path_factory: pytest.TempPathFactory, object_store: ObjectStore) -> Iterator[
        tuple[str, str]]:
    """`mlflow server` whose artifacts go to a bucket of the real object store: (its URI, that bucket's
    s3:// URI)."""
    bucket = f"s3://{object_store.make_bucket()}"
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-s3"), artifacts=f"{bucket}/mlflow",
                          env={**object_store.env(), "PYTHONPATH": str(boto3_path())})
    server.start()
    yield server.uri, bucket
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


# The order tests run in: the host test sees a host without a node; the unit and API-server tests
# run while the node comes up behind them (tests/node/bring_up.py); the node's tests before the
# e2e tests, and never beside them: its Ray pods are processes on this host, and a local Ray started
# while they run would see them (and refuse to start a sweep).
_ORDER = ("tests/node/test_cluster_host.py", "tests/unit/", "tests/integration/", "tests/node/", "tests/e2e/")


def _order_of(item: pytest.Item) -> int:
    path = Path(str(item.fspath)).resolve().relative_to(Path(__file__).resolve().parents[1]).as_posix()
    return next((rank for rank, prefix in enumerate(_ORDER) if path.startswith(prefix)), len(_ORDER))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_order_of)


def pytest_collection_finish(session: pytest.Session) -> None:
    node_bring_up.plan(session.items)


def pytest_runtest_setup(item: pytest.Item) -> None:
    node_bring_up.start_if_due(item)


def pytest_sessionfinish() -> None:
    node_bring_up.abandon()


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
