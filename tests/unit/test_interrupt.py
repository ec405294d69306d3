"""The signal handling of `raylight run` (tests/e2e/test_interrupt sends real signals to real runs)."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from raylight_trainer import interrupt


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
    import subprocess
    import sys

    with interrupt.handling_signals():
        with interrupt.starting_ray():
            # What ray.init does here: start processes (they inherit the ignored SIGINT), and take
            # SIGTERM over in the driver.
            child = subprocess.run([sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT))"],
                                   capture_output=True, text=True, check=True)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        assert int(child.stdout) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.getsignal(signal.SIGTERM) is interrupt._on_signal
