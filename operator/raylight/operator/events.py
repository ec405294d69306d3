"""Kubernetes Events, posted off the reconcile path (client-go's event recorder is asynchronous too).

An Event is a courtesy to whoever runs `kubectl describe`: a reconcile only hands it over and goes
on, and one thread posts them in order. When the API server is slow and Events pile up past the
buffer, the newest are dropped (and said so in the log) rather than holding reconciles back.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from kubernetes.client.exceptions import ApiException

from .kube import Kube, api_message

log = logging.getLogger("raylight.operator")
_BUFFER = 1000


class EventRecorder:
    def __init__(self, kube: Kube, buffer: int = _BUFFER) -> None:
        self._kube = kube
        self._pending: queue.Queue[tuple[dict[str, Any], str, str, str] | None] = queue.Queue(maxsize=buffer)
        self._thread = threading.Thread(target=self._post_all, name="events", daemon=True)
        self._dropped = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Posts what is waiting (for up to `timeout`), then ends."""
        try:
            self._pending.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def record(self, involved: dict[str, Any], type_: str, reason: str, message: str) -> None:
        try:
            self._pending.put_nowait((involved, type_, reason, message))
        except queue.Full:
            self._dropped += 1
            if self._dropped in (1, 10, 100) or self._dropped % 1000 == 0:
                log.warning("%d Events dropped: the API server takes them slower than they come", self._dropped)

    def _post_all(self) -> None:
        while (item := self._pending.get()) is not None:
            involved, type_, reason, message = item
            try:
                self._kube.post_event(involved, type_, reason, message)
            except ApiException as exc:  # never fatal: the status says it all as well
                log.warning("could not post the Event %s on %s: %s", reason, involved["metadata"]["name"],
                            api_message(exc))
            except Exception:  # a lost connection, a bug: the next Event may still go through
                log.exception("could not post the Event %s on %s", reason, involved["metadata"]["name"])
