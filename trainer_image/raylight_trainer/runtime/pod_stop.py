"""The Ray pods' preStop hook: a run whose pods Kubernetes stops (a suspended RayJob, a deleted
head pod, a drained node) is interrupted as Ctrl-C interrupts `raylight run`, then resumes.

Without it, each pod's main process, `ray start --block`, answers the pod's SIGTERM by killing
every Ray process of the pod at once: the driver dies without marking its MLflow runs, and a
trial whose worker pod went first is recorded as failed and is not resumed. KubeRay deletes a
suspended RayJob's cluster without stopping its job and leaves a graceful stop to a preStop hook.
Kubernetes runs the hook before that SIGTERM, within the pod's grace period:

- `driver` (the head): SIGTERM to the driver (the PID it wrote, see raylight.api.pods), which
  stops the run gracefully; then wait until it has exited.
- `workers`: wait while the head still runs a job (Ray's job API on the head), so that the trials
  on this pod end when the driver stops them, not before. A worker pod deleted alone waits for
  its grace period, training meanwhile; then Ray Train resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from raylight.api.pods import DRIVER_PID_FILE, DRIVER_PID_FILE_ENV
from raylight_trainer.runtime.procfs import stat_fields

POLL_SECONDS = 0.5
DASHBOARD_PORT = 8265
_ACTIVE_JOB_STATES = ("PENDING", "RUNNING")


def say(message: str) -> None:
    """A line in the pod's log (the container's main process's output), where `kubectl logs`
    shows it; a hook's own output is kept nowhere."""
    line = f"raylight pod stop: {message}\n"
    try:
        with open("/proc/1/fd/1", "a") as pod_log:
            pod_log.write(line)
    except OSError:
        sys.stdout.write(line)
        sys.stdout.flush()


def write_driver_pid() -> Path | None:
    """In the head pod (the variable set): record this process as the run's driver."""
    where = os.environ.get(DRIVER_PID_FILE_ENV)
    if not where:
        return None
    path = Path(where)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(os.getpid()))
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) has stopped all the same.
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def wait_until(done: Callable[[], bool], deadline: float) -> bool:
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True


def stop_driver(pid_file: Path, within: float) -> bool:
    """SIGTERM to the driver named in pid_file, then wait (at most `within` s) until it has exited.
    True when no driver is left running."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return True  # no run started on this head, or it ended
    if not _alive(pid):
        return True
    started = time.monotonic()
    say(f"asking the run's driver (pid {pid}) to stop (SIGTERM), waiting up to {within:.0f} s")
    os.kill(pid, signal.SIGTERM)
    stopped = wait_until(lambda: not _alive(pid), started + within)
    took = time.monotonic() - started
    say(f"the driver stopped after {took:.1f} s" if stopped else f"the driver still ran after {took:.0f} s")
    return stopped


def head_runs_a_job(jobs_url: str) -> bool:
    """Whether Ray's job API at jobs_url lists a pending or running job; False once the head
    cannot be reached (it is gone, or going)."""
    try:
        with urllib.request.urlopen(jobs_url, timeout=3) as answer:
            jobs = json.load(answer)
    except (OSError, ValueError):
        return False
    return any(isinstance(job, dict) and job.get("status") in _ACTIVE_JOB_STATES for job in jobs)


def head_jobs_url() -> str | None:
    """Ray's job API on the head, by the address KubeRay gives every worker container."""
    host = os.environ.get("FQ_RAY_IP") or os.environ.get("RAY_IP")
    return f"http://{host}:{DASHBOARD_PORT}/api/jobs/" if host else None


def wait_for_the_driver(jobs_url: str, within: float) -> bool:
    started = time.monotonic()
    if not head_runs_a_job(jobs_url):
        return True
    say(f"waiting up to {within:.0f} s for the run's driver to stop its trials")
    ended = wait_until(lambda: not head_runs_a_job(jobs_url), started + within)
    took = time.monotonic() - started
    say(f"the run's driver ended after {took:.1f} s" if ended else f"the run still ran after {took:.0f} s")
    return ended


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name if __spec__ else 'pod_stop'}",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("role", choices=("driver", "workers"))
    parser.add_argument("--within", type=float, required=True, help="seconds to wait at most")
    args = parser.parse_args(argv)
    if args.role == "driver":
        stop_driver(Path(os.environ.get(DRIVER_PID_FILE_ENV) or DRIVER_PID_FILE), args.within)
    else:
        url = head_jobs_url()
        if url:
            wait_for_the_driver(url, args.within)
    return 0  # a hook that fails only adds a warning Event; the pod stops either way


if __name__ == "__main__":
    sys.exit(main())
