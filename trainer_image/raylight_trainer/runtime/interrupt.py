"""Ctrl-C (SIGINT) and SIGTERM during a run: stop it cleanly, keep what resuming needs, say so.

A terminal sends SIGINT; Kubernetes sends SIGTERM when a pod is deleted, a RayJob suspended or a
node drained. Both take the same path here. The first signal stops the run where it can be
resumed: a sweep through Tune's own interrupt (the trials stop, the experiment state is written
one last time), a TrainingJob by leaving its workers, whose checkpoints are already saved. The
run then ends as interrupted: MLflow runs KILLED, no best model, a non-zero exit (128 + the
signal), and the same command resumes it. A second signal stops at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

from .procfs import all_pids, stat_fields

T = TypeVar("T")
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _State:
    received: int | None = None
    # What the first signal does instead of stopping at once (set while a run can stop gracefully).
    graceful: Callable[[], None] | None = None


_state = _State()
_work_running: set[object] = set()  # one token per in_background_thread work not yet returned


def received_signal() -> int | None:
    """The signal that interrupted this run, if one did."""
    return _state.received


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def exit_code(signum: int) -> int:
    """What a shell reports for a process ended by that signal: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + signum


def _on_signal(signum: int, frame: Any) -> None:
    if _state.received is not None:
        if signum == signal.SIGTERM:
            return  # already stopping; SIGKILL is how Kubernetes says "now"
        raise KeyboardInterrupt  # a second Ctrl-C: at once
    _state.received = signum
    if _state.graceful is None:
        raise KeyboardInterrupt
    _state.graceful()


@contextlib.contextmanager
def handling_signals() -> Iterator[None]:
    """SIGINT and SIGTERM handled as above for the duration (main thread only; elsewhere Python's own)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {signum: signal.getsignal(signum) for signum in _SIGNALS}
    # Tune's SIGINT handler would stop a sweep without our knowing which signal did; ours asks Tune
    # to stop (through the handler Tune keeps on SIGUSR1) and remembers.
    env_before = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    received_before = _state.received
    _state.received, _state.graceful = None, None
    for signum in _SIGNALS:
        signal.signal(signum, _on_signal)
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
        if env_before is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = env_before
        # The signal was this run's: a later run in the same process must not read it as its own
        # stop (no attributions, called interrupted).
        _state.received, _state.graceful = received_before, None


@contextlib.contextmanager
def starting_ray() -> Iterator[None]:
    """Around `ray.init`. The processes Ray starts ignore SIGINT: a terminal's Ctrl-C reaches its
    whole process group, and a trial's workers that took it would end the trial as if it had
    finished; stopping is the driver's job. Ray's core worker also takes over SIGTERM in the driver
    (to print a stack and abort): the handlers in place before are put back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {signum: signal.getsignal(signum) for signum in _SIGNALS}
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited by Ray's processes, which keep it ignored
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _stop_tune() -> None:
    """Tune's interrupt: its handler on SIGUSR1, registered when `Tuner.fit` starts (until then,
    nothing to stop gracefully)."""
    handler = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
    if not callable(handler):
        raise KeyboardInterrupt
    handler(signal.SIGUSR1, None)


@contextlib.contextmanager
def tune_stops_gracefully() -> Iterator[None]:
    """Around `Tuner.fit()` in the main thread: the first signal ends the sweep as Tune's Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    usr1_before = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
    _state.graceful = _stop_tune
    tune_log = logging.getLogger("ray.tune.tune")
    tune_log.addFilter(_drop_tunes_resume_hints)
    try:
        yield
    finally:
        _state.graceful = None
        tune_log.removeFilter(_drop_tunes_resume_hints)
        if hasattr(signal, "SIGUSR1") and usr1_before is not None:
            signal.signal(signal.SIGUSR1, usr1_before)


def say_it_finishes() -> None:
    """The words for a signal that came once the training had ended: the run is finished, not cut."""
    name = signal_name(_state.received) if _state.received is not None else "a signal"
    sys.stderr.write(f"{name} received after the training ended: the run's results, best model and final counts "
                     "are being written, then it ends (Ctrl-C again stops at once)\n")
    sys.stderr.flush()


@contextlib.contextmanager
def finishing_up() -> Iterator[None]:
    """Around what follows the training (the results read back, the best model logged, the MLflow
    runs ended): a first signal here is noted and these seconds run to the end, so that no half-
    logged model or half-written record is left behind; a second Ctrl-C stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state.graceful = say_it_finishes
    try:
        yield
    finally:
        _state.graceful = None


def ending_at_once_on_a_signal(code: int) -> None:
    """For the process's last moments, once its command is over (Ray's shutdown, the logs' flushes):
    a signal (Ctrl-C again, a pod's SIGTERM) ends it at once with the command's exit code, instead
    of a KeyboardInterrupt raised inside an exit handler (a traceback, Ray's shutdown cut short and
    its agents left running). The processes it started (a local Ray's) are killed first."""
    if threading.current_thread() is not threading.main_thread():
        return

    def end(signum: int, frame: Any) -> None:
        sys.stderr.write(f"{signal_name(signum)} while exiting: stopped at once\n")
        end_now(code or exit_code(signum))

    for signum in _SIGNALS:
        signal.signal(signum, end)


def end_now(code: int) -> NoReturn:
    """Kill the processes this one started (a local Ray's), then exit with code, at once.

    No other thread runs Python meanwhile: one waiting inside Ray, woken by its raylet's death,
    would otherwise go on in a Ray whose processes are gone (and Ray may end the process with its
    own exit code). The kills release no GIL, and the interpreter is told not to switch threads."""
    sys.stdout.flush()
    sys.stderr.flush()
    doomed = _descendants(os.getpid())  # reads /proc, which lets other threads run: before the kills
    sys.setswitchinterval(3600)
    for pid in doomed:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    os._exit(code)


def work_left_in_background() -> bool:
    """Whether work handed to in_background_thread still runs (an interrupt left it behind). Its
    own flag, not Thread.is_alive(): a join that Ctrl-C interrupts marks the thread stopped while
    it runs on (Python 3.11's _wait_for_tstate_lock releases the lock the running thread holds)."""
    return bool(_work_running)


def _descendants(pid: int) -> set[int]:
    """Every process under pid, by the kernel's parent links (/proc; none where there is no /proc)."""
    children: dict[int, list[int]] = {}
    for child in all_pids():
        fields = stat_fields(child)
        if fields and len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(child)
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        below = [child for parent in frontier for child in children.get(parent, []) if child not in found]
        found.update(below)
        frontier = below
    return found


def _drop_tunes_resume_hints(record: logging.LogRecord) -> bool:
    """Tune's words on an interrupt name its Python API (Tuner.restore); ours name the command."""
    message = record.getMessage()
    return not any(hint in message for hint in ("Tuner.restore", "Stop signal received", "Trials did not complete"))


def in_background_thread(work: Callable[[], T]) -> T:
    """`work()` in a daemon thread, the main thread waiting on it, so that a signal interrupts the
    wait (KeyboardInterrupt) and not the work: Ray Train's own SIGINT handler, which only aborts
    gracefully and ignores a second Ctrl-C, is not installed outside the main thread. Work left
    behind ends with the process (Ray's workers with their driver)."""
    outcome: dict[str, Any] = {}
    token = object()

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # handed to the waiting thread
            outcome["error"] = exc
        finally:
            _work_running.discard(token)

    thread = threading.Thread(target=run, daemon=True, name="raylight-fit")
    _work_running.add(token)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]
