"""Free TCP ports for the processes a run or a test starts on this machine (Ray's dashboard, MLflow).

Why not `bind(("127.0.0.1", 0))`: the kernel answers from its ephemeral range (32768-60999 by
default), the range every outgoing connection also draws from. Ray's head starts a dozen processes
that open connections between our check and the dashboard's own bind, and one of them took the
very port we had picked ("127.0.0.1:44227 already occupied", a CI run). So the ports here come
from below the ephemeral range and above Ray's worker ports (10002-19999 by default), where no
connection takes a port by chance, and one process never hands out the same port twice.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

# Ray's workers listen on 10002-19999 unless told otherwise (`--min/max-worker-port`).
LOWEST_PORT = 20000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()
_lock = threading.Lock()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' ports (Linux's default where /proc says nothing)."""
    try:
        low, high = (int(field) for field in _EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def _candidate_ports() -> range:
    low, high = ephemeral_range()
    if low > LOWEST_PORT + 1000:
        return range(LOWEST_PORT, low)
    # A kernel whose ephemeral range starts low: above it, then.
    return range(max(high + 1, LOWEST_PORT), 65536)


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, outside the ephemeral range, new to this
    process. Random, so that processes picking at the same moment rarely pick alike."""
    candidates = _candidate_ports()
    with _lock:
        for _ in range(200):
            port = random.choice(candidates)
            if port not in _handed_out and _is_free(port):
                _handed_out.add(port)
                return port
    raise RuntimeError(f"no free TCP port on 127.0.0.1 in {candidates.start}-{candidates.stop - 1} after 200 tries")
