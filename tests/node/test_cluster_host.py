"""tests/cluster's host changes on their own (node/host, down), without a node's processes: a node
whose run died is taken down by the next one, a live one is never touched, and the host ends as
it began. Runs before the session's node fixture starts a node (this file sorts first)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kube import CLUSTER_SCRIPTS

HOST = CLUSTER_SCRIPTS / "node" / "host"
OWNER_FILE = Path("/run/raylight-test-node")


def host_state() -> dict[str, str]:
    """What the node changes on the host: rules (without counters and dates), the bridge, the owner file."""
    def rules(command: str) -> str:
        out = subprocess.run([command], capture_output=True, text=True, check=True).stdout
        return "\n".join(re.sub(r"\[\d+:\d+\]", "", line) for line in out.splitlines() if not line.startswith("#"))

    bridge = subprocess.run(["ip", "link", "show", "raylight0"], capture_output=True).returncode == 0
    return {"iptables": rules("iptables-save"), "ip6tables": rules("ip6tables-save"), "bridge": str(bridge),
            "owner": OWNER_FILE.read_text() if OWNER_FILE.exists() else "",
            "forwarding": Path("/proc/sys/net/ipv4/ip_forward").read_text()}


def setup(directory: Path) -> subprocess.CompletedProcess[str]:
    directory.mkdir(exist_ok=True)
    return subprocess.run([str(HOST), "setup", str(directory)], capture_output=True, text=True, timeout=120)


def test_a_node_whose_run_died_is_taken_down_by_the_next_and_a_live_one_is_kept(tmp_path: Path) -> None:
    if subprocess.run(["ip", "link", "show", "raylight0"], capture_output=True).returncode == 0:
        pytest.skip("a test node is up on this host")
    before = host_state()
    dead, live = tmp_path / "dead", tmp_path / "live"
    holder = None
    try:
        made = setup(dead)
        assert made.returncode == 0, made.stderr
        assert host_state()["bridge"] == "True" and OWNER_FILE.read_text().strip() == str(dead)

        # A process of the first node still runs: the second may not touch it.
        holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", f"{dead}/etcd"])
        refused = setup(live)
        assert refused.returncode == 1
        assert f"a test node is already up on this host (bridge raylight0 exists): stop it with " \
               f"tests/cluster/down {dead}" in refused.stderr, refused.stderr
        assert (dead / "host").is_dir() and OWNER_FILE.read_text().strip() == str(dead)

        # Its last process gone (as when a test run is SIGKILLed), the next node takes it down first.
        holder.kill()
        holder.wait()
        reclaimed = setup(live)
        assert reclaimed.returncode == 0, reclaimed.stderr
        assert f"the test node in {dead} outlived its run" in reclaimed.stderr
        assert not dead.exists() and OWNER_FILE.read_text().strip() == str(live)
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
        for directory in (live, dead):
            subprocess.run([str(CLUSTER_SCRIPTS / "down"), str(directory)], check=False, timeout=120)
    assert host_state() == before
