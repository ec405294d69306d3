"""KubeRay's submitter for a run, made to wait for the Ray job instead of for its log stream.

`python -m raylight_trainer.runtime.submitter --entrypoint CMD` in the submitter Job's pod.
KubeRay's own command is `ray job submit --no-wait` then `ray job logs --follow`, and KubeRay takes
the end of that command for the end of the job: once the submitter has finished, a job that is not
terminal 30 s later is failed (KubeRay 1.5, `checkSubmitterFinishedTimeoutAndUpdateStatusIfNeeded`;
kuberay#4921). But the log stream can end while the job runs: the dashboard closes it cleanly when
its connection to the job agent breaks (on a loaded node: a CI run's sweep failed so), and a dropped
connection ends it with an error. Here the stream ending is only a reason to ask Ray how the job
is: still running, the logs are followed again from where they stopped; terminal, the submitter
ends (exit 0, as KubeRay's does; KubeRay reads the outcome from the dashboard). When the job is
gone (a new head pod has a new GCS) or the dashboard stays unreachable, it exits 1 as KubeRay's
command does, so the Job's retry submits it again.

KubeRay gives this container RAY_DASHBOARD_ADDRESS and RAY_JOB_SUBMISSION_ID (the same id on
every retry, so a job is submitted once).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

# How often the job's status is asked once its log stream ended, and for how long a dashboard that
# does not answer is waited for (KubeRay recreates a lost head pod within that).
STATUS_POLL_S = 5.0
UNREACHABLE_LIMIT_S = 90.0
REQUEST_TIMEOUT_S = 10.0
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raylight_trainer.runtime.submitter")
    parser.add_argument("--entrypoint", required=True, help="the Ray job's entrypoint (a shell command)")
    args = parser.parse_args(argv)
    address = os.environ["RAY_DASHBOARD_ADDRESS"]
    if "://" not in address:
        address = f"http://{address}"
    job_id = os.environ["RAY_JOB_SUBMISSION_ID"]

    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    if job_status(client, job_id) is None:
        client.submit_job(entrypoint=args.entrypoint, submission_id=job_id)
    else:
        say(f"job {job_id} was submitted before this pod: following it")
    return follow(client, job_id)


def follow(client: Any, job_id: str) -> int:
    """Print the job's log until the job is terminal (0), gone or unreachable (1)."""
    printed = 0
    while True:
        printed = asyncio.run(print_log(client, job_id, printed))
        status = wait_for_status(client, job_id)
        if status is None:
            return 1
        if status in TERMINAL:
            say(f"job {job_id} is {status}")
            return 0
        say(f"the log stream of job {job_id} ended while the job is {status}: following it again")
        time.sleep(STATUS_POLL_S)


async def print_log(client: Any, job_id: str, printed: int) -> int:
    """Follow the job's log, printing what comes after the first `printed` characters (a stream
    starts at the log's beginning); the characters printed so far once the stream ends."""
    seen = 0
    try:
        async for chunk in client.tail_job_logs(job_id):
            new = chunk[max(printed - seen, 0):]
            seen += len(chunk)
            if new:
                sys.stdout.write(new)
                sys.stdout.flush()
    except Exception as error:  # any end of the stream is followed by a status check
        say(f"the log stream of job {job_id} broke: {error}")
    return max(printed, seen)


def wait_for_status(client: Any, job_id: str) -> str | None:
    """The job's status; None when the dashboard answers without it or has not answered for
    UNREACHABLE_LIMIT_S."""
    deadline = time.monotonic() + UNREACHABLE_LIMIT_S
    while True:
        try:
            status = job_status(client, job_id)
        except Exception as error:  # unreachable (refused, reset, timed out) is retried
            if time.monotonic() > deadline:
                say(f"the Ray dashboard did not answer for {UNREACHABLE_LIMIT_S:.0f} s: {error}")
                return None
            time.sleep(STATUS_POLL_S)
            continue
        if status is None:
            say(f"the Ray cluster has no job {job_id} any more (a new head pod)")
        return status


def job_status(client: Any, job_id: str) -> str | None:
    """The job's status (PENDING, RUNNING, SUCCEEDED, ...), or None when the cluster has no such
    job; raises when the dashboard does not answer within REQUEST_TIMEOUT_S (the SDK's requests
    have no timeout of their own). The job list, not the job: a missing job is then no error."""
    jobs = within(REQUEST_TIMEOUT_S, client.list_jobs)
    return next((str(job.status.value) for job in jobs if job.submission_id == job_id), None)


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """call()'s result, or TimeoutError once `seconds` have passed (the call is left to a daemon
    thread, which the process does not wait for)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except Exception as error:  # handed to the caller
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {seconds:.0f} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def say(message: str) -> None:
    print(f"raylight submitter: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
