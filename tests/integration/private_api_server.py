"""A kube-apiserver of a test's own on the test cluster's etcd: one it may stop, kill and restart,
with users of its own, or (another etcd prefix) an empty cluster of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.parse
from pathlib import Path

import yaml

from raylight_trainer.runtime.ports import free_port
from tests.kube import Cluster, kill_process, stop_process, wait_for


def with_flags(argv: list[str], flags: dict[str, str]) -> list[str]:
    """argv with each `--flag value` or `--flag=value` of `flags` set to its value (added if absent)."""
    result, index, pending = [], 0, dict(flags)
    while index < len(argv):
        name, has_value, _ = argv[index].partition("=")
        if name in pending:
            result.append(f"{name}={pending.pop(name)}")
            index += 1 if has_value else 2
            continue
        result.append(argv[index])
        index += 1
    return result + [f"{name}={value}" for name, value in pending.items()]


class PrivateApiServer:
    """A kube-apiserver of the test's own on the cluster's etcd, started with the cluster's own
    server's flags, each of `users` a member of system:masters by a token of its own; `flags` change
    or add flags (an audit policy, another etcd prefix: a cluster of its own, empty)."""

    def __init__(self, cluster: Cluster, directory: Path, users: tuple[str, ...],
                 flags: dict[str, str] | None = None) -> None:
        self.cluster, self.directory, self.users = cluster, directory, users
        main_pid = int((cluster.directory / "kube-apiserver.pid").read_text())
        argv = Path(f"/proc/{main_pid}/cmdline").read_bytes().decode().split("\0")[:-1]
        main = yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]
        host = urllib.parse.urlsplit(main["server"]).hostname
        self.port = free_port()
        self.server, self.ca = f"https://{host}:{self.port}", main["certificate-authority"]
        self.tokens = {user: os.urandom(16).hex() for user in users}
        tokens = directory / "tokens.csv"
        tokens.write_text("".join(f'{token},{user},{user},"system:masters"\n' for user, token in self.tokens.items()))
        self.argv = with_flags(argv, {
            "--secure-port": str(self.port), "--token-auth-file": str(tokens),
            # The cluster's own API server keeps the `kubernetes` Service's endpoints.
            "--endpoint-reconciler-type": "none", **(flags or {}),
        })
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.directory / "kube-apiserver.log").open("a")
        self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        admin = self.kubeconfig(self.users[0])
        wait_for(lambda: self._ready(admin), timeout=90, interval=0.5, what="the test's own API server")

    def _ready(self, kubeconfig: Path) -> bool:
        assert self.process is not None and self.process.poll() is None, (
            (self.directory / "kube-apiserver.log").read_text()[-3000:])
        return subprocess.run([str(self.cluster.bin / "kubectl"), "--kubeconfig", str(kubeconfig), "get", "--raw",
                               "/readyz"], capture_output=True, timeout=20).returncode == 0

    def kubeconfig(self, user: str) -> Path:
        path = self.directory / f"{user}.kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "outage", "cluster": {"server": self.server, "certificate-authority": self.ca}}],
            "users": [{"name": user, "user": {"token": self.tokens[user]}}],
            "contexts": [{"name": "outage", "context": {"cluster": "outage", "user": user}}],
            "current-context": "outage",
        }))
        return path

    def signal(self, number: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    def kill(self) -> None:
        kill_process(self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a stopped process ends only once it runs
        stop_process(self.process)
