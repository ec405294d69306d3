"""MLflow that answers something else than MLflow (an auth proxy's login page, a 500, nothing at
all) is said: a ProgressError naming the server, the poller's state, one log line; never an
exception lost in a thread pool."""

from __future__ import annotations

import http.server
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from raylight.api import parse_resource
from raylight.operator.progress import MlflowReader, ProgressError, ProgressPoller, ProgressTarget, end_runs

LOGIN_PAGE = b"<html><body>Sign in to continue</body></html>"


class Front:
    """A local HTTP server that answers every request the way `mode` says."""

    def __init__(self) -> None:
        self.mode = "html"
        self.requests = 0
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                front.requests += 1
                if front.mode == "hang":
                    time.sleep(3)
                status, body = (500, b"Internal Server Error") if front.mode == "500" else (200, LOGIN_PAGE)
                self.send_response(status)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def front() -> Iterator[Front]:
    server = Front()
    yield server
    server.close()


def job() -> Any:
    return parse_resource({"apiVersion": "raylight.dev/v1alpha1", "kind": "TrainingJob",
                           "metadata": {"name": "behind-a-proxy", "namespace": "ns", "uid": "u-1"},
                           "spec": {"model": {"preset": "vit-nano"}}})


def test_a_login_page_is_a_progress_error_naming_the_server_and_what_it_got(front: Front) -> None:
    with pytest.raises(ProgressError, match=r"not MLflow's JSON.*Sign in") as raised:
        MlflowReader(front.uri).experiment_id("x")
    assert front.uri in str(raised.value)


@pytest.mark.parametrize("mode, said", [("html", "not MLflow's JSON"), ("500", "answered 500"),
                                        ("hang", "cannot be reached")])
def test_the_poller_records_each_failure_and_logs_it_once(front: Front, mode: str, said: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    front.mode = mode
    changed: list[Any] = []
    poller = ProgressPoller(0.2, on_change=changed.append, timeout=1.0)
    key = ("TrainingJob", "ns", "behind-a-proxy")
    poller.track(key, ProgressTarget(job(), front.uri, "hash", None))
    with caplog.at_level(logging.WARNING, logger="raylight.operator"):
        poller.start()
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and (poller.state(key) is None or front.requests < 2):
                time.sleep(0.05)
        finally:
            poller.stop()
    state = poller.state(key)
    assert state is not None and state.error is not None and said in state.error, state
    assert changed == [key]  # the reconcile is told, once: the state did not change after
    logged = [r.getMessage() for r in caplog.records if "progress cannot be read" in r.getMessage()]
    assert len(logged) == 1 and said in logged[0], logged


def test_ending_the_runs_of_a_deleted_resource_behind_a_login_page_is_logged(
        front: Front, caplog: pytest.LogCaptureFixture) -> None:
    body = {"kind": "TuneSweep", "metadata": {"name": "gone"},
            "status": {"phase": "Running", "mlflow": {"runId": "r1", "experimentId": "1", "trackingUri": front.uri}}}
    with caplog.at_level(logging.WARNING, logger="raylight.operator"):
        end_runs(body, settings=None)
    assert any("stay as they are" in r.getMessage() and "not MLflow's JSON" in r.getMessage()
               for r in caplog.records), caplog.text
