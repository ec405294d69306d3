"""The command of a run's submitter Job against a real Ray's Jobs API, through a proxy that ends the
job's log stream while the job runs, as Ray's dashboard did on a loaded CI node (a sweep's RayJob
was failed by KubeRay 30 s after its submitter ended, with the job still running)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

from raylight_trainer.runtime.submitter import job_status
from tests.integration.tcp_proxy import TcpProxy
from tests.kube import wait_for

LINES = 40
JOB = "import time\nfor i in range({lines}):\n    print(f'line {{i}}', flush=True)\n    time.sleep(0.5)\n"


def _job_status(dashboard: str, job_id: str) -> str | None:
    """The job's status, read straight from the dashboard (not through the proxy)."""
    from ray.job_submission import JobSubmissionClient

    return job_status(JobSubmissionClient(f"http://{dashboard}"), job_id)


def test_the_submitter_follows_the_job_to_its_end_when_the_log_stream_ends_early(
    ray_local: None, tmp_path: Path
) -> None:
    import ray

    dashboard = ray._private.worker.get_dashboard_url()
    proxy = TcpProxy(int(dashboard.rsplit(":", 1)[1]))
    job_id = f"raylight-submitter-{uuid.uuid4().hex[:8]}"
    entrypoint = shlex.join([sys.executable, "-c", JOB.format(lines=LINES)])
    env = {"RAY_DASHBOARD_ADDRESS": f"127.0.0.1:{proxy.port}", "RAY_JOB_SUBMISSION_ID": job_id,
           "PYTHONUNBUFFERED": "1"}
    outputs = {name: (tmp_path / f"{name}.out", tmp_path / f"{name}.err") for name in ("ours", "kuberays")}
    processes: list[subprocess.Popen[bytes]] = []

    def start(name: str, command: list[str]) -> subprocess.Popen[bytes]:
        out, err = outputs[name]
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env={**os.environ, **env})
        processes.append(process)
        return process

    def printed(name: str, line: str) -> bool:
        return line in outputs[name][0].read_text().splitlines()

    try:
        ours = start("ours", [sys.executable, "-m", "raylight_trainer.runtime.submitter", "--entrypoint", entrypoint])
        wait_for(lambda: _job_status(dashboard, job_id) == "RUNNING", timeout=60, what="the job running")
        # KubeRay's own follower (the end of its submitter command), on the same job and proxy.
        kuberays = start("kuberays", [str(Path(sys.executable).parent / "ray"), "job", "logs", "--address",
                                      f"http://127.0.0.1:{proxy.port}", "--follow", job_id])
        wait_for(lambda: printed("ours", "line 4") and printed("kuberays", "line 4"), timeout=60,
                 what="both following the log")
        proxy.end_websockets()

        kuberays.wait(timeout=30)
        status_when_kuberays_ended = _job_status(dashboard, job_id)
        assert kuberays.returncode == 0 and status_when_kuberays_ended == "RUNNING", (
            "KubeRay's `ray job logs --follow` ends as if the job were done (KubeRay then fails it 30 s "
            f"later): exit {kuberays.returncode}, the job {status_when_kuberays_ended}")

        assert ours.wait(timeout=120) == 0, outputs["ours"][1].read_text()
        assert _job_status(dashboard, job_id) == "SUCCEEDED"
        lines = [line for line in outputs["ours"][0].read_text().splitlines() if line.startswith("line ")]
        assert lines == [f"line {i}" for i in range(LINES)], "every line of the log once, in order"
        said = outputs["ours"][1].read_text()
        assert "ended while the job is RUNNING: following it again" in said, said
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        proxy.close()
        if _job_status(dashboard, job_id) in ("PENDING", "RUNNING"):
            from ray.job_submission import JobSubmissionClient

            JobSubmissionClient(f"http://{dashboard}").stop_job(job_id)

