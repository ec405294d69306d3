"""The few Kubernetes API calls the operator makes, on the official client.

Objects are written with server-side apply under one field manager: applying the same object
again changes nothing, and fields other managers own (a GitOps tool's, KubeRay's) are left alone.
"""

from __future__ import annotations

import datetime
import json
import socket
from collections.abc import Callable
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from raylight.api import GROUP, VERSION

from .builder import FIELD_MANAGER

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
PLURALS = {"TrainingJob": "trainingjobs", "TuneSweep": "tunesweeps"}
_HOSTNAME = socket.gethostname()


def load_config(kubeconfig: str | None = None) -> None:
    """In a pod: its ServiceAccount; elsewhere: KUBECONFIG / ~/.kube/config."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig)


READ_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 10.0
"""Every call is bounded: a connection that hangs without closing holds a worker only this long
(and the work queue retries it). A write's bound is also the leader's write window (`fence`)."""


class Kube:
    def __init__(self, pool_size: int = 32) -> None:
        configuration = client.Configuration.get_default_copy()
        # Handlers run in a thread pool; a bigger pool keeps them from queueing on connections.
        configuration.connection_pool_maxsize = pool_size
        # No urllib3 retries: each would wait a whole timeout again; the work queue retries instead.
        configuration.retries = False
        self.api = client.ApiClient(configuration)
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self._write_window: Callable[[], float] | None = None

    def fence(self, write_window: Callable[[], float]) -> None:
        """Bound every write by the time this replica may still write (the leader elector's
        `check_writable`, which raises NotLeading when too little is left): no write outlives the
        leadership it was made under."""
        self._write_window = write_window

    def _write_timeout(self) -> float:
        if self._write_window is None:
            return WRITE_TIMEOUT_S
        return min(WRITE_TIMEOUT_S, self._write_window())

    def apply_rayjob(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        self.custom.patch_namespaced_custom_object(
            "ray.io", "v1", meta["namespace"], "rayjobs", meta["name"], body,
            field_manager=FIELD_MANAGER, force=True, _content_type=APPLY, _request_timeout=self._write_timeout(),
        )

    def get_rayjob(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found = self.custom.get_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", name,
                                                             _request_timeout=READ_TIMEOUT_S)
            return cast(dict[str, Any], found)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def delete_rayjob(self, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", name,
                                                        _request_timeout=self._write_timeout())
        except ApiException as exc:
            if exc.status != 404:
                raise

    def patch_status(self, kind: str, namespace: str, name: str, resource_version: str | None,
                     patch: dict[str, Any]) -> str:
        """A merge patch of one of our resources' status, on the condition that it is still at
        `resource_version` (the version the status was computed from): a 409 means the object
        moved on, and its watch event brings a reconcile that sees the new version. Returns the
        version the write made."""
        body: dict[str, Any] = {"status": patch}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        written = cast(dict[str, Any], self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURALS[kind], name, body, field_manager=FIELD_MANAGER, _content_type=MERGE,
            _request_timeout=self._write_timeout(),
        ))
        return str(written["metadata"]["resourceVersion"])

    def latest_warning(self, namespace: str, uid: str) -> tuple[str, str] | None:
        """The newest Warning Event about one object (a pod's FailedMount, say): reason, message."""
        return self._newest_warning(namespace, f"involvedObject.uid={uid},type=Warning")

    def latest_warning_about(self, namespace: str, kind: str, name: str, reasons: tuple[str, ...],
                             since: datetime.datetime) -> tuple[str, str] | None:
        """The newest Warning Event with one of reasons about the object kind/name made since
        `since`: Events outlive their object by an hour, and a name comes back with a new run."""
        return self._newest_warning(
            namespace, f"involvedObject.kind={kind},involvedObject.name={name},type=Warning",
            lambda event: event.reason in reasons and _when(event) >= since)

    def _newest_warning(self, namespace: str, selector: str,
                        wanted: Callable[[client.CoreV1Event], bool] = lambda _: True) -> tuple[str, str] | None:
        found = [event for event in self.core.list_namespaced_event(
            namespace, field_selector=selector, _request_timeout=READ_TIMEOUT_S).items if wanted(event)]
        if not found:
            return None
        newest = max(found, key=_when)
        return str(newest.reason), str(newest.message or "")

    def post_event(self, involved: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A Kubernetes Event on one of our resources (what `kubectl describe` lists)."""
        meta = involved["metadata"]
        now = datetime.datetime.now(datetime.UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
            involved_object=client.V1ObjectReference(
                api_version=involved["apiVersion"], kind=involved["kind"], name=meta["name"],
                namespace=meta["namespace"], uid=meta.get("uid"), resource_version=meta.get("resourceVersion"),
            ),
            type=type_, reason=reason, message=message[:1024], count=1, first_timestamp=now, last_timestamp=now,
            source=client.V1EventSource(component=FIELD_MANAGER), reporting_component=FIELD_MANAGER,
            reporting_instance=_HOSTNAME,
        )
        self.core.create_namespaced_event(meta["namespace"], event, _request_timeout=self._write_timeout())


def _when(event: client.CoreV1Event) -> datetime.datetime:
    stamp = event.last_timestamp or event.event_time or event.metadata.creation_timestamp
    return cast(datetime.datetime, stamp)


def api_message(exc: ApiException) -> str:
    """The API server's own message (it names the field), not the HTTP dump."""
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except ValueError:
        return str(exc.reason)


def refused_by_schema(exc: ApiException) -> bool:
    """The object itself is wrong (it will be on every retry), not the server nor a policy.

    Server-side apply answers a value of the wrong type with a 500 "failed to create typed patch
    object" instead of a 422. An admission webhook's refusal, or one about the metadata we set
    (owner references), is not the user's spec error."""
    message = api_message(exc)
    if exc.status == 500:
        return "failed to create typed patch object" in message
    return exc.status in (400, 422) and "admission webhook" not in message and "metadata." not in message
