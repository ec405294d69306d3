"""Ports handed to Ray's dashboard and MLflow stay out of the range outgoing connections draw from
(a CI run lost its dashboard to a connection of Ray's own head that took the port we had picked)."""

from __future__ import annotations

import socket

from raylight_trainer.runtime.ports import LOWEST_PORT, ephemeral_range, free_port


def test_free_ports_are_outside_the_ephemeral_range_and_above_rays_worker_ports() -> None:
    low, high = ephemeral_range()
    ports = [free_port() for _ in range(50)]
    assert all(not low <= port <= high for port in ports), ports
    assert all(port >= LOWEST_PORT for port in ports), ports


def test_one_process_never_gets_the_same_port_twice_and_each_can_be_bound() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    for port in ports[:5]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_something_listens_on_is_never_handed_out(monkeypatch) -> None:
    import raylight_trainer.runtime.ports as ports_module

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        taken = listener.getsockname()[1]
        listener.listen()
        # Only the taken port and one other to choose from: the taken one must be skipped.
        monkeypatch.setattr(ports_module, "_candidate_ports", lambda: range(taken, taken + 2))
        monkeypatch.setattr(ports_module, "_handed_out", set())
        assert free_port() == taken + 1
