"""The Ray pods' preStop hook, with real processes and a real HTTP server in the place of the head.

(The node tests run it in real pods: a suspended sweep's runs end KILLED and the sweep resumes.)"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from raylight.api.pods import DRIVER_PID_FILE_ENV
from raylight_trainer.runtime import pod_stop

# A driver as the trainer's is: it writes its PID, takes a while to stop on SIGTERM, then exits 143.
DRIVER = textwrap.dedent("""
    import signal, sys, time
    from raylight_trainer.runtime.pod_stop import write_driver_pid
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(time.monotonic()))
    write_driver_pid()
    print("ready", flush=True)
    while not stopping:
        time.sleep(0.05)
    time.sleep(1.0)  # writing its state, marking its MLflow runs
    sys.exit(143)
""")


def test_the_driver_is_asked_to_stop_and_waited_for(tmp_path: Path) -> None:
    pid_file = tmp_path / "run" / "driver.pid"
    env = {**os.environ, DRIVER_PID_FILE_ENV: str(pid_file)}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout is not None and driver.stdout.readline() == "ready\n"
        assert int(pid_file.read_text()) == driver.pid
        started = time.monotonic()
        # The hook is another process, as kubelet runs it; the driver's parent reaps it meanwhile.
        reaper = threading.Thread(target=driver.wait)
        reaper.start()
        hook = subprocess.run([sys.executable, "-m", "raylight_trainer.runtime.pod_stop", "driver", "--within", "20"],
                              env=env, capture_output=True, text=True, timeout=30)
        reaper.join()
        assert hook.returncode == 0, hook.stderr
        assert driver.returncode == 143, "the driver did not get its SIGTERM"
        assert 1.0 <= time.monotonic() - started < 10, "the hook did not wait for the driver to finish stopping"
    finally:
        driver.kill()


def test_a_driver_that_does_not_stop_in_time_is_left_to_kubernetes(tmp_path: Path) -> None:
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time\n"
                                 "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint(1, flush=True)\ntime.sleep(60)"],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline() == "1\n"
        (tmp_path / "driver.pid").write_text(str(stubborn.pid))
        started = time.monotonic()
        assert pod_stop.stop_driver(tmp_path / "driver.pid", within=1.0) is False
        assert 1.0 <= time.monotonic() - started < 3 and stubborn.poll() is None
    finally:
        stubborn.kill()
        stubborn.wait()


def test_no_driver_no_wait(tmp_path: Path) -> None:
    assert pod_stop.stop_driver(tmp_path / "absent.pid", within=30) is True
    (tmp_path / "old.pid").write_text("999999999")  # a driver long gone
    assert pod_stop.stop_driver(tmp_path / "old.pid", within=30) is True


class _Head(http.server.BaseHTTPRequestHandler):
    """Ray's job API as the head answers it: GET /api/jobs/ lists the jobs with their status."""

    jobs: list[dict[str, str]] = []

    def do_GET(self) -> None:
        body = json.dumps(self.jobs if self.path == "/api/jobs/" else {}).encode()
        self.send_response(200 if self.path == "/api/jobs/" else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def head() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Head)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/jobs/"
    finally:
        server.shutdown()
        server.server_close()


def test_workers_wait_while_the_head_runs_the_job_and_not_once_it_ended_or_is_gone(head: str) -> None:
    _Head.jobs = [{"submission_id": "old", "status": "SUCCEEDED"}, {"submission_id": "run", "status": "RUNNING"}]
    assert pod_stop.head_runs_a_job(head)

    def driver_stops() -> None:
        time.sleep(1.5)
        _Head.jobs = [{"submission_id": "old", "status": "SUCCEEDED"}, {"submission_id": "run", "status": "FAILED"}]

    threading.Thread(target=driver_stops).start()
    started = time.monotonic()
    assert pod_stop.wait_for_the_driver(head, within=20) is True
    assert 1.5 <= time.monotonic() - started < 10
    # Finished jobs only (the run ended before the pods were deleted): no wait at all.
    assert pod_stop.wait_for_the_driver(head, within=20) is True
    # A head that cannot be reached any more (gone first): no wait either.
    assert pod_stop.head_runs_a_job("http://127.0.0.1:9/api/jobs/") is False


def test_a_worker_pod_without_the_heads_address_stops_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FQ_RAY_IP", raising=False)
    monkeypatch.delenv("RAY_IP", raising=False)
    assert pod_stop.head_jobs_url() is None
    assert pod_stop.main(["workers", "--within", "30"]) == 0
    monkeypatch.setenv("FQ_RAY_IP", "tj-x-head-svc.ns.svc.cluster.local")
    assert pod_stop.head_jobs_url() == "http://tj-x-head-svc.ns.svc.cluster.local:8265/api/jobs/"
