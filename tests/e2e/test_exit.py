"""How a run's process ends when an interrupt left work waiting inside Ray (an interrupted
TrainingJob's fit, blocked in Ray Train's wait for its controller): with the interrupt's exit code,
the local Ray's processes gone, and that work never woken inside a Ray being shut down (Ray then
ends the process with its own exit code 1: an e2e run exited 1 instead of 143 after SIGTERM)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raylight_trainer.runtime.procfs import stat_fields

# Runs its own Ray instance (one process); no other instance may be alive meanwhile.
pytestmark = pytest.mark.slow

SCRIPT = '''
import faulthandler
faulthandler.dump_traceback_later(120, exit=True)  # hung: every thread's stack, and an end
import os, signal, sys, threading, time
from pathlib import Path
import ray
from raylight_trainer.driver import exit_quickly, start_ray
from raylight_trainer.runtime.interrupt import _descendants, in_background_thread

marker = Path(sys.argv[1])
start_ray(num_cpus=1, verbose=False)

@ray.remote(num_cpus=0)
class Controller:
    def run(self) -> None:
        time.sleep(3600)

controller = Controller.remote()
ray.get(controller.__ray_ready__.remote())
print(" ".join(str(pid) for pid in sorted(_descendants(os.getpid()))), flush=True)

def fit() -> None:  # as Ray Train's: wait for the controller inside ray.get
    try:
        ray.get(controller.run.remote())
    finally:
        marker.write_text("woken inside Ray after the interrupt")

threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
try:
    in_background_thread(fit)
except KeyboardInterrupt:
    exit_quickly(130)
'''


def test_an_interrupt_that_leaves_work_inside_ray_ends_with_its_code_and_no_ray_left(tmp_path: Path) -> None:
    script, marker = tmp_path / "interrupted.py", tmp_path / "woken"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    ended = subprocess.run([sys.executable, str(script), str(marker)], capture_output=True, text=True,
                           timeout=180, env=env)
    assert ended.returncode == 130, ended.stderr[-3000:]
    assert not marker.exists(), "the waiting work went on inside Ray as it was shut down"
    ray_pids = [int(pid) for pid in ended.stdout.split()]
    assert ray_pids, "the local Ray started processes"

    def running(pid: int) -> bool:  # a killed process whose parent is gone may linger as a zombie
        fields = stat_fields(pid)
        return fields is not None and fields[0] != "Z"

    deadline = time.monotonic() + 30
    while any(running(pid) for pid in ray_pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [pid for pid in ray_pids if running(pid)], "the local Ray's processes were left running"
