"""A TCP proxy in front of a real server (the test cluster's API server, Ray's dashboard), for
network faults a real client meets: connections that go silent without closing, a server that
refuses connections, WebSocket streams that end before their job does.

TLS passes through untouched (the API server's certificate names 127.0.0.1, whatever the port).
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import yaml


class TcpProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = self._listen(0)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._connections: list[tuple[socket.socket, socket.socket, threading.Event]] = []
        self._silent_now = threading.Event()  # every connection, new ones too, forwards nothing
        self._closed = threading.Event()
        self._accepting = threading.Thread(target=self._accept_loop, args=(self._listener,), daemon=True)
        self._accepting.start()

    @staticmethod
    def _listen(port: int) -> socket.socket:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        return listener

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._closed.is_set():
            try:
                downstream, _ = listener.accept()
            except OSError:
                return  # the listener was closed: refusing
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                downstream.close()
                continue
            upstream.settimeout(None)
            silenced = threading.Event()
            with self._lock:
                self._connections.append((downstream, upstream, silenced))
            threading.Thread(target=self._pump, args=(downstream, upstream, silenced), daemon=True).start()

    def _pump(self, downstream: socket.socket, upstream: socket.socket, silenced: threading.Event) -> None:
        sockets = [downstream, upstream]
        try:
            while not self._closed.is_set():
                if silenced.is_set() or self._silent_now.is_set():
                    # Held open, nothing forwarded: the client sees a server that stopped answering.
                    self._closed.wait(0.2)
                    continue
                readable, _, _ = select.select(sockets, [], [], 0.2)
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    (upstream if source is downstream else downstream).sendall(data)
        except OSError:
            return
        finally:
            for each in sockets:
                with contextlib.suppress(OSError):
                    each.close()

    def silence(self) -> None:
        """Every connection, open or new, goes silent (held open, nothing forwarded) until `heal`."""
        self._silent_now.set()

    def silence_open_connections(self) -> None:
        """The connections open now go silent for good (never closed); new ones work."""
        with self._lock:
            for _, _, silenced in self._connections:
                silenced.set()

    def refuse(self) -> None:
        """Connections open now are reset and new ones refused, until `heal`."""
        with self._lock:
            # shutdown first: a close alone does not wake the thread blocked in accept(), and the
            # socket would go on listening under it.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            for downstream, upstream, _ in self._connections:
                for each in (downstream, upstream):
                    with contextlib.suppress(OSError):
                        each.shutdown(socket.SHUT_RDWR)
                        each.close()
            self._connections.clear()

    def end_websockets(self) -> None:
        """Every open connection is sent a WebSocket close frame (1000, a normal close) and closed,
        as a server ends a stream it is done with: the client cannot tell it from the real end.
        Forwarding stops first, so the frame lands between two of the server's (small) frames."""
        with self._lock:
            connections = list(self._connections)
            self._connections.clear()
        for _, _, silenced in connections:
            silenced.set()
        time.sleep(0.5)  # a pump in select() forwards at most what it had read (0.2 s)
        for downstream, upstream, _ in connections:
            with contextlib.suppress(OSError):
                downstream.sendall(b"\x88\x02\x03\xe8")  # FIN + close opcode, 2 bytes of payload: 1000
            for each in (downstream, upstream):
                with contextlib.suppress(OSError):
                    each.shutdown(socket.SHUT_RDWR)
                    each.close()

    def heal(self) -> None:
        self._silent_now.clear()
        with self._lock:
            if self._listener.fileno() == -1:
                self._listener = self._listen(self.port)
                threading.Thread(target=self._accept_loop, args=(self._listener,), daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        self.refuse()

    def kubeconfig(self, original: Path, destination: Path) -> Path:
        """A copy of a kubeconfig whose clusters go through this proxy."""
        config = yaml.safe_load(original.read_text())
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = f"https://127.0.0.1:{self.port}"
        destination.write_text(yaml.safe_dump(config))
        return destination


def api_server_port(kubeconfig: Path) -> int:
    config = yaml.safe_load(kubeconfig.read_text())
    return int(config["clusters"][0]["cluster"]["server"].rsplit(":", 1)[1].rstrip("/"))


@contextlib.contextmanager
def proxy_in_front_of(kubeconfig: Path) -> Iterator[TcpProxy]:
    proxy = TcpProxy(api_server_port(kubeconfig))
    try:
        yield proxy
    finally:
        proxy.close()
