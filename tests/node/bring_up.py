"""The test node brought up while the tests before it run (tests/BUDGET.md, `node: up`).

`tests/cluster/up --node` costs minutes whenever the node's images change (every change to the
project's code: the trainer image's import alone is two of them) and most of ten on a cold machine.
Started when the first test after tests/node/test_cluster_host.py sets up (that test must see a
host with no node), it runs beside the unit and API-server tests, which leave the CPU idle most of
their time, and the node fixture only waits for what is left. The image builds run at a lower
priority (tests/cluster/images), so they take what the tests leave.

The node fixture takes the bring-up over; a session that ends before it does (a failure with -x,
Ctrl-C) stops it and takes the node down in pytest_sessionfinish."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.kube import CLUSTER_SCRIPTS

NODE_TESTS = Path(__file__).resolve().parent
HOST_TEST = NODE_TESTS / "test_cluster_host.py"


def needs_the_node(item: pytest.Item) -> bool:
    path = Path(str(item.fspath)).resolve()
    return path.parent == NODE_TESTS and path != HOST_TEST


@dataclass
class BringUp:
    """One `tests/cluster/up --node DIR` in a session of its own; DIR and up's log in a folder of
    their own (holder), which taking the node down removes."""

    holder: Path
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    taken: bool = False

    @classmethod
    def in_new_folder(cls) -> BringUp:
        return cls(Path(tempfile.mkdtemp(prefix="raylight-node-")))

    @property
    def directory(self) -> Path:
        return self.holder / "node"

    @property
    def log(self) -> Path:
        return self.holder / "up.log"

    def start(self) -> None:
        if self.process is not None:
            return
        self.started = time.monotonic()
        with self.log.open("wb") as out:
            self.process = subprocess.Popen([str(CLUSTER_SCRIPTS / "up"), "--node", str(self.directory)],
                                            stdout=subprocess.DEVNULL, stderr=out, start_new_session=True)

    def wait(self, timeout: float) -> tuple[int, str]:
        """up's exit status and what it wrote (how long each image took, or why it failed)."""
        self.start()
        assert self.process is not None
        code = self.process.wait(timeout=timeout)
        return code, self.log.read_text(errors="replace")

    def take_down(self) -> None:
        """Stop an `up` still running (its group: the builds under it), then undo what it did."""
        from tests.conftest import stop_group  # imported here: tests.conftest imports this module

        stop_group(self.process)
        subprocess.run([str(CLUSTER_SCRIPTS / "down"), str(self.directory)], check=False, timeout=300)
        shutil.rmtree(self.holder, ignore_errors=True)


_state: dict[str, BringUp] = {}
_wanted: dict[str, bool] = {}


def plan(items: list[pytest.Item]) -> None:
    """After collection: will this session need the node at all?"""
    _wanted["node"] = os.geteuid() == 0 and any(needs_the_node(item) for item in items)


def start_if_due(item: pytest.Item) -> None:
    """Before each test: the first one that is not the host test starts the bring-up."""
    if not _wanted.get("node") or "node" in _state or Path(str(item.fspath)).resolve() == HOST_TEST:
        return
    _state["node"] = BringUp.in_new_folder()
    _state["node"].start()


def take() -> BringUp:
    """The node fixture's: the bring-up (started now if no test ran before it), now its to take down."""
    if "node" not in _state:
        _state["node"] = BringUp.in_new_folder()
    bring_up = _state["node"]
    bring_up.taken = True
    return bring_up


def abandon() -> None:
    """At the session's end: a bring-up that no fixture took is stopped and taken down."""
    bring_up = _state.get("node")
    if bring_up is not None and not bring_up.taken:
        bring_up.take_down()
