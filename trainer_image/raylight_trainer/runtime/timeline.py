"""Timestamps of a trial's stages, for `bench/trial_overhead.py` (off unless RAYLIGHT_TIMELINE is set).

Every process of a run (the sweep driver, trial actors, Ray Train workers) appends one JSON line
per mark to the file that variable names; Ray's local workers inherit the driver's environment.
Appends of a short line are atomic, so the processes need no lock. The Lightning and Tune
callbacks that mark are in `timeline_hooks`: this module imports nothing heavy, so the driver can
mark before torch is loaded.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from .procfs import stat_fields

TIMELINE_ENV = "RAYLIGHT_TIMELINE"
_trial: dict[str, str | None] = {"id": None}


def enabled() -> bool:
    return bool(os.environ.get(TIMELINE_ENV))


def for_trial(trial_id: str | None) -> None:
    """Name the trial whose stages this process marks from now on."""
    _trial["id"] = trial_id


def mark(event: str, at: float | None = None, trial: str | None = None, **extra: Any) -> None:
    path = os.environ.get(TIMELINE_ENV)
    if not path:
        return
    line = {"t": time.time() if at is None else at, "event": event, "trial": trial or _trial["id"],
            "pid": os.getpid(), **extra}
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")


def mark_process_start(event: str) -> None:
    """When this process was created (a trial actor, a training worker): what came before its
    first mark was process start-up and imports."""
    if not enabled():
        return
    fields = stat_fields()  # Linux: the start time in clock ticks after boot (field 22 of /proc/self/stat)
    if not fields:
        return
    try:
        ticks = int(fields[19])
        with open("/proc/stat", encoding="ascii") as system:
            boot = next(int(line.split()[1]) for line in system if line.startswith("btime"))
    except (OSError, ValueError, IndexError, StopIteration):
        return
    mark(event, at=boot + ticks / os.sysconf("SC_CLK_TCK"))
