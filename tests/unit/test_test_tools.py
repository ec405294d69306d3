"""The tools of the test suite itself: the budget table, kubectl's process timeout, the quick selection."""

from __future__ import annotations

from tests.budget import area_of, budget_lines, report
from tests.kube import process_timeout
from tests.quick import e2e_tests_for, module_name


def test_budget_lines_come_from_budget_md_and_every_test_file_has_an_area() -> None:
    from pathlib import Path

    lines = budget_lines()
    names = [line.name for line in lines]
    assert {"install", "unit", "e2e", "node: quickstart", "total"} <= set(names)
    repo = Path(__file__).resolve().parents[2]
    for path in sorted(repo.glob("tests/**/test_*.py")):
        relative = str(path.relative_to(repo))
        assert area_of(relative, lines) != "other", f"{relative} has no line in tests/BUDGET.md"


def test_a_line_over_its_share_is_flagged_and_warned_but_others_are_not() -> None:
    lines = budget_lines("""
| line | tests | warm | cold | grows to | what comes |
|---|---|---|---|---|---|
| `install` | pip | 0.5 | 16 | 0.5 | |
| `unit` | `tests/unit/*` | 3 | 3.5 | 4 | |
| `total` | all | 45 | 75 | 45 | |
""")
    assert area_of("tests/unit/test_api.py", lines) == "unit"
    warm = report({"install": 120.0}, {"areas": {"unit": 60.0}, "tests": {"tests/unit/test_api.py::t": 30.0}},
                  cold=False, lines=lines)
    assert any(row.startswith("install") and row.endswith("OVER") for row in warm), warm
    assert any(row.startswith("unit") and not row.endswith("OVER") for row in warm), warm
    assert "budget: install took 2.0 min, over its 0.5 min (warm); see tests/BUDGET.md" in warm
    assert any("tests/unit/test_api.py::t" in row for row in warm)
    cold = report({"install": 120.0}, {}, cold=True, lines=lines)
    assert not [row for row in cold if row.startswith("budget:")], cold


def test_kubectls_process_outlives_its_own_timeout() -> None:
    assert process_timeout(("wait", "--for=condition=Succeeded", "--timeout=1200s", "ts/x")) == 1260
    assert process_timeout(("wait", "--timeout=30m")) == 1860
    assert process_timeout(("wait", "--timeout=30s")) == 120  # never below the default
    assert process_timeout(("get", "pods")) == 120


def test_quick_picks_the_e2e_files_that_name_a_changed_module() -> None:
    assert module_name("trainer_image/raylight_trainer/runtime/storage.py") == "raylight_trainer.runtime.storage"
    assert module_name("operator/raylight/api/__init__.py") == "raylight.api"
    assert module_name("README.md") is None
    picked = e2e_tests_for(["trainer_image/raylight_trainer/runtime/storage.py", "tests/e2e/test_interrupt.py"])
    assert "tests/e2e/test_interrupt.py" in picked  # changed itself
    assert "tests/e2e/test_object_storage.py" in picked  # names raylight_trainer.runtime.storage
    assert "tests/e2e/test_gpu_check.py" not in picked
    assert e2e_tests_for(["README.md"]) == []
