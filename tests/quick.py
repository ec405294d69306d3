"""`tests/run --quick`: the tests a developer runs after a change, in minutes; CI runs everything.

A pytest plugin (tests/conftest.py loads it) that, with RAYLIGHT_QUICK=1, keeps the unit and
API-server tests (without the slow ones), and the end-to-end tests that the change touches:
  - the e2e test files changed,
  - the e2e files that name a changed module of ours (`raylight_trainer.tuning.sweep`, `raylight.cli`),
  - and, when the trainer's code changed at all, the smoke tests (`pytest.mark.smoke`): one
    TrainingJob and one sweep through `raylight run`, the path every run takes.
Changed means: since the merge base with $RAYLIGHT_QUICK_BASE (default main), committed or not,
untracked files included. The node's tests never run here (their cluster alone takes minutes)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FAST = ["tests/unit", "tests/integration"]
SOURCE_ROOTS = ("operator/", "trainer_image/")


def changed_files(base: str) -> list[str]:
    def git(*args: str) -> list[str]:
        result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True)
        return [line for line in result.stdout.splitlines() if line]

    merge_base = git("merge-base", "HEAD", base)[0]
    return sorted({*git("diff", "--name-only", merge_base), *git("ls-files", "--others", "--exclude-standard")})


def module_name(path: str) -> str | None:
    """`trainer_image/raylight_trainer/tuning/sweep.py` -> `raylight_trainer.tuning.sweep`."""
    for root in SOURCE_ROOTS:
        if path.startswith(root) and path.endswith(".py"):
            dotted = path.removeprefix(root).removesuffix(".py").replace("/", ".")
            return dotted.removesuffix(".__init__")
    return None


def e2e_tests_for(changed: list[str]) -> list[str]:
    e2e_files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests" / "e2e").glob("test_*.py"))
    selected = {path for path in changed if path in e2e_files}
    modules = [name for name in map(module_name, changed) if name]
    for path in e2e_files:
        text = (REPO / path).read_text()
        if any(re.search(rf"\b{re.escape(name)}\b", text) for name in modules):
            selected.add(path)
    return sorted(selected)


def selection(changed: list[str]) -> tuple[list[str], bool]:
    """(the e2e files to run whole, whether the smoke tests run too)."""
    return e2e_tests_for(changed), any(path.startswith("trainer_image/") for path in changed)


# -- the pytest plugin: with RAYLIGHT_QUICK=1 (tests/run --quick) it keeps the quick selection ----

def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    if os.environ.get("RAYLIGHT_QUICK") != "1":
        return
    e2e, smoke = selection(changed_files(os.environ.get("RAYLIGHT_QUICK_BASE", "main")))
    kept: list[Any] = []
    dropped: list[Any] = []
    for item in items:
        path = str(Path(str(item.fspath)).relative_to(REPO))
        fast = path.startswith(tuple(FAST)) and item.get_closest_marker("slow") is None
        chosen = path in e2e or (smoke and item.get_closest_marker("smoke") is not None)
        (kept if (fast or chosen) and item.get_closest_marker("node") is None else dropped).append(item)
    config.hook.pytest_deselected(items=dropped)
    items[:] = kept
    print(f"\nquick: unit and API-server tests without the slow ones, e2e files {e2e or 'none'}"
          f"{', and the smoke tests (the trainer changed)' if smoke else ''}: {len(kept)} tests")
