"""Linux's /proc/PID/stat, read the one safe way: the command's name (field 2) may hold spaces and
parentheses, so the fields are those after its last ")"."""

from __future__ import annotations

from pathlib import Path


def stat_fields(pid: int | str = "self") -> list[str] | None:
    """The fields of /proc/PID/stat from the state on (the state is [0], the parent [1], the
    session [3], the start time [19]); None where the process is gone or there is no /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    _, _, after_name = text.rpartition(")")
    return after_name.split() or None


def all_pids() -> list[int]:
    """The processes alive now, by /proc's entries (none where there is no /proc)."""
    return [int(entry.name) for entry in Path("/proc").glob("[0-9]*")]
