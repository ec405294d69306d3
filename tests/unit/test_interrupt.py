"""The signal handling of `raylight run` (tests/e2e/test_interrupt sends real signals to real runs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from raylight_trainer.runtime import interrupt
from raylight_trainer.runtime.procfs import all_pids, stat_fields


def test_outside_a_graceful_stop_the_first_signal_stops_at_once_and_is_remembered() -> None:
    with interrupt.handling_signals():
        assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 0.1)  # let the handler run
        assert interrupt.received_signal() == signal.SIGTERM
        assert interrupt.exit_code(signal.SIGTERM) == 143 and interrupt.signal_name(signal.SIGTERM) == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "the handler outlived the run"
    assert "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ


def test_in_a_sweep_the_first_signal_asks_tune_to_stop_and_the_second_stops_at_once() -> None:
    asked: list[int] = []
    before = signal.getsignal(signal.SIGUSR1)
    with interrupt.handling_signals(), interrupt.tune_stops_gracefully():
        signal.signal(signal.SIGUSR1, lambda signum, frame: asked.append(signum))  # as Tuner.fit registers
        os.kill(os.getpid(), signal.SIGINT)
        signal.sigtimedwait([], 0.1)
        assert asked == [signal.SIGUSR1] and interrupt.received_signal() == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 0.1)
        assert asked == [signal.SIGUSR1]
    assert signal.getsignal(signal.SIGUSR1) == before


def test_a_second_sigterm_is_ignored_while_the_run_stops_a_ctrl_c_after_it_is_not() -> None:
    # Kubernetes may send SIGTERM twice (KubeRay's job stop, then the pod's own stop): the graceful
    # stop under way goes on; only a person's Ctrl-C means "now".
    asked: list[int] = []
    with interrupt.handling_signals(), interrupt.tune_stops_gracefully():
        signal.signal(signal.SIGUSR1, lambda signum, frame: asked.append(signum))
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0.1)
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0.1)
        assert asked == [signal.SIGUSR1] and interrupt.received_signal() == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 0.1)


def test_after_the_training_a_signal_lets_the_bookkeeping_finish_and_a_second_ctrl_c_does_not(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with interrupt.handling_signals(), interrupt.finishing_up():
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0.1)  # no KeyboardInterrupt: the best model's logging goes on
        assert interrupt.received_signal() == signal.SIGTERM
        assert "SIGTERM received after the training ended" in capfd.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 0.1)


def test_background_work_hands_back_its_value_or_its_error() -> None:
    assert interrupt.in_background_thread(lambda: threading.current_thread().name) == "raylight-fit"

    def fails() -> None:
        raise ValueError("from the worker thread")

    with pytest.raises(ValueError, match="from the worker thread"):
        interrupt.in_background_thread(fails)


def test_processes_started_with_ray_ignore_ctrl_c_and_the_drivers_handlers_come_back() -> None:
    with interrupt.handling_signals():
        with interrupt.starting_ray():
            # What ray.init does here: start processes (they inherit the ignored SIGINT), and take
            # SIGTERM over in the driver.
            child = subprocess.run([sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT))"],
                                   capture_output=True, text=True, check=True)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        assert int(child.stdout) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.getsignal(signal.SIGTERM) is interrupt._on_signal


EXITING_SCRIPT = """
import atexit, os, pathlib, sys, time
import ray
from raylight_trainer.driver import exit_quickly
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
marker = pathlib.Path(sys.argv[1])

def slow_exit_handler():  # runs before Ray's shutdown (exit handlers run last first)
    marker.write_text("exiting")
    time.sleep(60)

atexit.register(slow_exit_handler)
exit_quickly(0)
"""


POOL_SCRIPT = """
from concurrent.futures import ThreadPoolExecutor
from raylight_trainer.driver import exit_quickly
pool = ThreadPoolExecutor(max_workers=1)  # kept, as MLflow keeps its artifact copier's
pool.submit(print, "copied").result()
exit_quickly(3)
"""


def test_exit_quickly_ends_a_process_that_keeps_an_idle_thread_pool() -> None:
    """A TrainingJob whose model was logged with extra files never exited: MLflow's artifact pool
    keeps an idle non-daemon worker, which only threading's exit hook stops."""
    done = subprocess.run([sys.executable, "-c", POOL_SCRIPT], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (3, "copied"), done.stderr

def in_session(session: int) -> set[int]:
    """The living processes of a session (a new session's processes keep it, orphans too)."""
    return {pid for pid in all_pids()
            if (fields := stat_fields(pid)) and fields[0] != "Z" and int(fields[3]) == session}


def test_a_signal_while_the_process_exits_ends_it_at_once_and_its_ray_processes_with_it(tmp_path: Path) -> None:
    """Ctrl-C again after a run was stopped, while its exit handlers run: no traceback from inside one,
    the command's exit code, and no process of the embedded Ray left behind."""
    marker = tmp_path / "exiting"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    process = subprocess.Popen([sys.executable, "-c", EXITING_SCRIPT, str(marker)], env=env,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the script's exit handler never ran"
            time.sleep(0.1)
        assert len(in_session(process.pid)) > 1, "Ray started no process"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, stderr
    assert "SIGINT while exiting: stopped at once" in stderr and "Traceback" not in stderr, stderr
    time.sleep(1)  # a killed process is gone once its parent (Ray's raylet, or init) has reaped it
    assert not in_session(process.pid), "Ray's processes outlived their driver"


def test_a_signal_belongs_to_the_run_it_stopped() -> None:
    """Once the command's handling ends, the signal it received is forgotten: a later run in the same
    process (`raylight run` called twice, or a library caller) is not treated as asked to stop,
    which would skip its attributions and call it interrupted."""
    with interrupt.handling_signals(), interrupt.finishing_up():
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0.1)
        assert interrupt.received_signal() == signal.SIGTERM
    assert interrupt.received_signal() is None
