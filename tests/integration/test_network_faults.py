"""The operator's API calls meet a network that fails: a TCP proxy in front of the real API server
makes connections go silent without closing, or refuses them.

- Leader election (client-go's rule): the leader stops leading before the standby may take the
  Lease, however its Lease calls fail, and its election thread outlives the failure.
- Every reconcile call is bounded; no watch hangs forever: an operator whose connections all went
  silent still sees a sweep made afterwards and gives it a RayJob.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from raylight.operator.election import LeaderElector, NotLeading
from raylight.operator.kube import READ_TIMEOUT_S, Kube

from .conftest import Cluster, OperatorProcess, wait_for
from .tcp_proxy import TcpProxy, proxy_in_front_of
from .test_operator import gpu_sweep

# Short, so that a test sees several terms in seconds; the ratios are client-go's (15/10/2).
LEASE_S, RENEW_S, RETRY_S = 3.0, 2.0, 0.4


def api_client(kubeconfig: Path) -> client.ApiClient:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return client.ApiClient(configuration)


@pytest.fixture
def proxy(kube_cluster: Cluster) -> Iterator[TcpProxy]:
    with proxy_in_front_of(kube_cluster.kubeconfig) as front:
        yield front


def elector(kubeconfig: Path, namespace: str, name: str) -> LeaderElector:
    return LeaderElector(api_client(kubeconfig), name="election-test", namespace=namespace, identity=name,
                         lease_duration=LEASE_S, renew_deadline=RENEW_S, retry_period=RETRY_S)


class Sampler:
    """Both candidates' view, every 20 ms: whether each leads and whether each may write."""

    def __init__(self, *candidates: LeaderElector) -> None:
        self.candidates = candidates
        self.samples: list[tuple[float, tuple[bool, ...], tuple[bool, ...]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.samples.append((time.monotonic(), tuple(c.leading for c in self.candidates),
                                 tuple(c.write_window() >= 0.5 for c in self.candidates)))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()

    def overlaps(self) -> list[float]:
        """Instants when more than one candidate led, or one could write while another led."""
        return [at for at, leading, writable in self.samples
                if sum(leading) > 1 or any(w and any(leading[:i] + leading[i + 1:]) for i, w in enumerate(writable))]


def hand_over(proxy: TcpProxy, fault: str, leader: LeaderElector, standby: LeaderElector) -> Sampler:
    with Sampler(leader, standby) as sampler:
        getattr(proxy, fault)()
        faulted = time.monotonic()
        wait_for(lambda: standby.leading, timeout=LEASE_S + RENEW_S + 10, interval=0.05, what="the standby to lead")
        stopped = next(at for at, leading, _ in sampler.samples if at >= faulted and not leading[0])
        assert stopped - faulted <= RENEW_S + RETRY_S + 0.5, "the leader led past its renew deadline"
        time.sleep(1)  # and it stays a standby while the network is down
    return sampler


@pytest.mark.parametrize("fault", ["silence", "refuse"])
def test_a_leader_whose_lease_calls_fail_stops_leading_before_the_standby_takes_over(
        kube_cluster: Cluster, namespace: str, proxy: TcpProxy, tmp_path: Path, fault: str) -> None:
    """`silence`: its calls hang (no answer, no close); `refuse`: connections are refused. Before the
    fix, a hung call blocked the renew-deadline check, and urllib3's MaxRetryError ended the election
    thread with the replica still leading: both cases had two leaders."""
    through_proxy = proxy.kubeconfig(kube_cluster.kubeconfig, tmp_path / "kubeconfig")
    leader, standby = elector(through_proxy, namespace, "a"), elector(kube_cluster.kubeconfig, namespace, "b")
    leader.start()
    try:
        wait_for(lambda: leader.leading, timeout=20, what="the first candidate to lead")
        standby.start()
        time.sleep(LEASE_S + 1)  # the standby watched the Lease being renewed: it stays a standby
        assert leader.leading and not standby.leading

        sampler = hand_over(proxy, fault, leader, standby)
        assert not sampler.overlaps(), f"two leaders at once at {sampler.overlaps()[:5]}"
        with pytest.raises(NotLeading):
            leader.check_writable()

        # The network heals: the old leader's election thread is alive, and it takes the Lease
        # again once the standby hands it back.
        proxy.heal()
        standby.stop()
        wait_for(lambda: leader.leading, timeout=LEASE_S * 3 + 10, interval=0.05, what="the old leader to lead again")
    finally:
        standby.stop()
        leader.stop()


def test_every_kube_call_is_bounded_and_a_write_by_the_leaders_window(
        kube_cluster: Cluster, namespace: str, proxy: TcpProxy, tmp_path: Path) -> None:
    """Before the fix a silent connection held a reconcile's worker for good: no call had a timeout."""
    previous = client.Configuration.get_default_copy()
    config.load_kube_config(config_file=str(proxy.kubeconfig(kube_cluster.kubeconfig, tmp_path / "kubeconfig")))
    try:
        kube = Kube(pool_size=4)  # takes a copy of the default configuration: the proxy's
    finally:
        client.Configuration.set_default(previous)  # the other tests in this process go direct
    assert kube.get_rayjob(namespace, "nothing") is None  # through the proxy, while it forwards
    proxy.silence()

    def timed(call: Any) -> tuple[float, BaseException | None]:
        outcome: list[BaseException | None] = []
        started = time.monotonic()
        worker = threading.Thread(target=lambda: outcome.append(_raised(call)), daemon=True)
        worker.start()
        worker.join(READ_TIMEOUT_S + 20)
        assert outcome, "the call never returned"
        return time.monotonic() - started, outcome[0]

    took, raised = timed(lambda: kube.get_rayjob(namespace, "nothing"))
    assert raised is not None and took < READ_TIMEOUT_S + 5, (took, raised)

    kube.fence(lambda: 1.5)  # the leader may write for 1.5 s more: so long, no longer
    rayjob = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "bounded", "namespace": namespace},
              "spec": {"entrypoint": "true"}}
    took, raised = timed(lambda: kube.apply_rayjob(rayjob))
    assert raised is not None and took < 4, (took, raised)

    kube.fence(lambda: (_ for _ in ()).throw(NotLeading("standing by")))
    took, raised = timed(lambda: kube.apply_rayjob(rayjob))
    assert isinstance(raised, NotLeading) and took < 1


def _raised(call: Any) -> BaseException | None:
    try:
        call()
    except BaseException as exc:  # what the call ended with is the result
        return exc
    return None


def test_an_operator_whose_connections_go_silent_still_sees_a_new_sweep(
        kube_cluster: Cluster, namespace: str, mlflow_server: str, proxy: TcpProxy, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every connection the operator has open goes silent for good, without closing (a NAT that
    forgot them, a half-dead load balancer). Its watches end on their own timeouts and start again
    on new connections: a sweep made afterwards gets its RayJob and status. Before the fix kopf's
    watch had no timeout and waited on the silent connection for the API server's own limit."""
    monkeypatch.setenv("RAYLIGHT_WATCH_TIMEOUT", "10")
    operator = OperatorProcess(kube_cluster, mlflow_server, tmp_path / "operator.log",
                               kubeconfig=proxy.kubeconfig(kube_cluster.kubeconfig, tmp_path / "kubeconfig"),
                               extra_args=("--namespace", namespace))
    operator.start()
    try:
        time.sleep(3)  # its watches are open
        proxy.silence_open_connections()
        assert kube_cluster.apply(gpu_sweep(), namespace).returncode == 0
        wait_for(lambda: kube_cluster.get("rayjob", "ts-gpu-sweep", namespace) is not None, timeout=120,
                 interval=1, what=f"the sweep's RayJob (operator log: {operator.log()[-1500:]})")
        wait_for(lambda: (kube_cluster.get("tunesweep", "gpu-sweep", namespace) or {}).get("status", {}).get("phase"),
                 timeout=60, interval=1, what="the sweep's status")
    finally:
        operator.stop()
