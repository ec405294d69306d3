"""The test budget: where a run of tests/run spends its minutes, against tests/BUDGET.md.

As a pytest plugin (loaded by tests/conftest.py) it adds up each test's wall time (setup, call and
teardown) by area and writes them to $RAYLIGHT_TEST_TIMES (a JSON file; tests/run sets it). As a
command, `python -m tests.budget report STAGES TIMES`, it prints one table of tests/run's stages
and pytest's areas with their budgets, then the slowest tests, and a warning for each line over
its share. Timings are noisy: this never fails a run.

An area's tests are named by path patterns (fnmatch, on the test's file path relative to the
repository) in BUDGET.md's table; the first area whose pattern matches takes the test."""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import pytest

    _STARTED = pytest.StashKey[float]()
except ImportError:  # the report command needs no pytest
    pass

REPO = Path(__file__).resolve().parents[1]
BUDGET_FILE = REPO / "tests" / "BUDGET.md"
SLOWEST = 15


@dataclass(frozen=True)
class Line:
    """One line of BUDGET.md's table: an area or stage and the minutes it may take."""

    name: str
    patterns: tuple[str, ...]  # test-file patterns for a pytest area; () for a stage of tests/run
    warm_minutes: float
    cold_minutes: float


# BUDGET.md's measured section (runs' minutes, a column per run): written by `measured`, never read as lines.
MEASURED_BEGIN, MEASURED_END = "<!-- measured: begin -->", "<!-- measured: end -->"


def budget_lines(text: str | None = None) -> list[Line]:
    """The rows of BUDGET.md's table whose first cell is a `name` in backquotes (its measured
    section's rows look the same and are left out)."""
    text = BUDGET_FILE.read_text() if text is None else text
    lines = []
    for row in text.partition(MEASURED_BEGIN)[0].splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if len(cells) < 4 or not re.fullmatch(r"`[^`]+`", cells[0]):
            continue
        patterns = tuple(re.findall(r"`([^`]+)`", cells[1]))
        lines.append(Line(cells[0].strip("`"), patterns, number(cells[2]), number(cells[3])))
    return lines


def number(cell: str) -> float:
    found = re.search(r"\d+(\.\d+)?", cell)
    if found is None:
        raise ValueError(f"{BUDGET_FILE.name}: a budget cell without minutes: {cell!r}")
    return float(found.group())


def area_of(path: str, lines: list[Line]) -> str:
    for line in lines:
        if any(fnmatch.fnmatch(path, pattern) for pattern in line.patterns):
            return line.name
    return "other"


# -- the pytest plugin ------------------------------------------------------------------------------

_durations: dict[str, float] = {}
_extra_stages: dict[str, float] = {}
_moved: dict[str, float] = {}  # seconds of a test's setup that a shared fixture's line took instead
_running = {"test": ""}  # the test pytest is running now


def record_stage(name: str, seconds: float) -> None:
    """A session fixture's own cost (the test node's `up`: `node: up` in BUDGET.md), taken out of the
    test that happened to set it up first and put on a line of its own."""
    _extra_stages[name] = _extra_stages.get(name, 0.0) + seconds
    if _running["test"]:
        _moved[_running["test"]] = _moved.get(_running["test"], 0.0) + seconds


def pytest_runtest_logstart(nodeid: str) -> None:
    _running["test"] = nodeid


def pytest_runtest_logreport(report: Any) -> None:
    _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + float(report.duration)


def pytest_sessionstart(session: Any) -> None:
    session.config.stash.setdefault(_STARTED, time.monotonic())


def pytest_sessionfinish(session: Any) -> None:
    target = os.environ.get("RAYLIGHT_TEST_TIMES")
    if not target:
        return
    lines = budget_lines()
    tests = {nodeid: seconds - _moved.get(nodeid, 0.0) for nodeid, seconds in _durations.items()}
    areas: dict[str, float] = dict(_extra_stages)
    for nodeid, seconds in tests.items():
        area = area_of(nodeid.split("::", 1)[0], lines)
        areas[area] = areas.get(area, 0.0) + seconds
    started = session.config.stash.get(_STARTED, time.monotonic())
    Path(target).write_text(json.dumps({
        "pytest_seconds": time.monotonic() - started, "areas": areas,
        "tests": dict(sorted(tests.items(), key=lambda item: -item[1])),
    }, indent=1))


# -- the report -------------------------------------------------------------------------------------

def read_stages(path: Path) -> dict[str, float]:
    """tests/run's stages: lines of `NAME<TAB>SECONDS`, a name given twice adds up."""
    stages: dict[str, float] = {}
    if path.exists():
        for row in path.read_text().splitlines():
            name, _, seconds = row.rpartition("\t")
            if name:
                stages[name] = stages.get(name, 0.0) + float(seconds)
    return stages


def report(stages: dict[str, float], times: dict[str, Any], cold: bool, lines: list[Line]) -> list[str]:
    """The table, the slowest tests and the warnings, as lines of text."""
    column = "cold" if cold else "warm"
    measured = {**stages, **times.get("areas", {})}
    out = [f"{'stage or area':<24} {'minutes':>8} {'budget (' + column + ')':>14}"]
    warnings = []
    for line in lines:
        if line.name not in measured:
            continue
        minutes = measured.pop(line.name) / 60
        share = line.cold_minutes if cold else line.warm_minutes
        flag = "  OVER" if minutes > share else ""
        out.append(f"{line.name:<24} {minutes:>8.1f} {share:>14.1f}{flag}")
        if flag:
            warnings.append(f"budget: {line.name} took {minutes:.1f} min, over its {share:g} min ({column}); "
                            f"see tests/BUDGET.md")
    for name, seconds in measured.items():  # stages or areas the table has no line for
        out.append(f"{name:<24} {seconds / 60:>8.1f} {'-':>14}")
    total_line = next((line for line in lines if line.name == "total"), None)
    total = sum(stages.values()) / 60
    if total_line is not None:
        share = total_line.cold_minutes if cold else total_line.warm_minutes
        out.append(f"{'whole run':<24} {total:>8.1f} {share:>14.1f}{'  OVER' if total > share else ''}")
        if total > share:
            warnings.append(f"budget: the whole run took {total:.1f} min, over its {share:g} min ({column})")
    slowest = list(times.get("tests", {}).items())[:SLOWEST]
    if slowest:
        out.append(f"\nthe {len(slowest)} slowest tests (setup + call + teardown):")
        out += [f"{seconds:>8.1f} s  {nodeid}" for nodeid, seconds in slowest]
    return out + (["", *warnings] if warnings else [])


def measured_table(results: list[dict[str, Any]], lines: list[Line]) -> list[str]:
    """BUDGET.md's measured section: a column of minutes per results file (build/budget.json of a run)."""
    header = "| line | " + " | ".join(result.get("label", "?") for result in results) + " |"
    out = [header, "|---" * (len(results) + 1) + "|"]
    for line in lines:
        if line.name == "total":
            cells = [f"{sum(r.get('stages', {}).values()) / 60:.1f}" for r in results]
        else:
            cells = [f"{seconds / 60:.1f}" if (seconds := {**r.get("stages", {}), **r.get("areas", {})}.get(line.name))
                     is not None else "-" for r in results]
        out.append(f"| `{line.name}` | " + " | ".join(cells) + " |")
    return out


def write_measured(paths: list[Path]) -> None:
    results = [json.loads(path.read_text()) for path in paths]
    text = BUDGET_FILE.read_text()
    before, _, rest = text.partition(MEASURED_BEGIN)
    _, _, after = rest.partition(MEASURED_END)
    sources = ", ".join(f"`{path.relative_to(REPO)}`" for path in paths)
    body = [f"Written by `python -m tests.budget measured` from {sources}.", "",
            *measured_table(results, budget_lines(text))]
    BUDGET_FILE.write_text(f"{before}{MEASURED_BEGIN}\n" + "\n".join(body) + f"\n{MEASURED_END}{after}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.budget")
    commands = parser.add_subparsers(dest="command", required=True)
    shown = commands.add_parser("report", help="the budget table of a tests/run")
    shown.add_argument("stages", type=Path)
    shown.add_argument("times", type=Path)
    shown.add_argument("--cold", action="store_true", help="compare with the cold budget")
    shown.add_argument("--json", type=Path, help="also write the stages and areas measured here")
    shown.add_argument("--label", default="", help="what this run was, for --json (e.g. 'warm, fresh clone')")
    measured = commands.add_parser("measured", help="BUDGET.md's measured section from runs' --json files")
    measured.add_argument("results", type=Path, nargs="+")
    args = parser.parse_args(argv)
    if args.command == "measured":
        write_measured([path.resolve() for path in args.results])
        return 0
    stages = read_stages(args.stages)
    times = json.loads(args.times.read_text()) if args.times.exists() else {}
    print("\n".join(report(stages, times, args.cold, budget_lines())))
    if args.json:
        args.json.write_text(json.dumps({"label": args.label, "cold": args.cold, "stages": stages, **times}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
