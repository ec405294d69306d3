"""The operator's view of the cluster, kept current by its watches (client-go's informer cache).

Reconciles read from here instead of the API server: a reconcile of 1000 idle resources costs no
requests. Each object is trimmed to what the reconcile reads (no managedFields, no last-applied
configuration: most of an object's size). Watch handlers write from the event loop while
reconciles read from worker threads, hence the lock and the copies.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping
from typing import Any

from .builder import LABEL_KIND, LABEL_NAME

Key = tuple[str, str, str]  # (kind, namespace, name) of a TrainingJob or TuneSweep
_DROPPED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


def _trim_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    kept = {k: metadata[k] for k in ("name", "namespace", "uid", "generation", "resourceVersion", "labels",
                                     "deletionTimestamp", "creationTimestamp") if k in metadata}
    annotations = {k: v for k, v in (metadata.get("annotations") or {}).items()
                   if k not in _DROPPED_ANNOTATIONS and not k.startswith("kopf.zalando.org/")}
    if annotations:
        kept["annotations"] = annotations
    return kept


def owner_key(metadata: Mapping[str, Any]) -> Key | None:
    """The resource a RayJob or pod belongs to, by the labels the builder puts on both."""
    labels = metadata.get("labels") or {}
    kind, name, namespace = labels.get(LABEL_KIND), labels.get(LABEL_NAME), metadata.get("namespace")
    if not (kind and name and namespace):
        return None
    return (str(kind), str(namespace), str(name))


def _trim_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    status = body.get("status") or {}
    return {
        "metadata": {k: body["metadata"].get(k) for k in ("name", "uid", "labels", "creationTimestamp",
                                                          "deletionTimestamp")},
        "spec": {"containers": [{"name": c.get("name"), "image": c.get("image")}
                                for c in (body.get("spec") or {}).get("containers", [])]},
        "status": {k: copy.deepcopy(status[k]) for k in ("phase", "conditions", "containerStatuses",
                                                           "initContainerStatuses", "reason", "message")
                   if k in status},
    }


class ObjectCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._resources: dict[Key, dict[str, Any]] = {}
        self._rayjobs: dict[Key, dict[str, Any]] = {}
        self._pods: dict[Key, dict[str, dict[str, Any]]] = {}
        self._written: dict[Key, str] = {}  # the resourceVersion our last status write made

    def wrote_status(self, key: Key, resource_version: str) -> None:
        """Our status write made this version: its watch event is our own echo."""
        with self._lock:
            self._written[key] = resource_version

    def is_own_write(self, key: Key, body: Mapping[str, Any]) -> bool:
        """The event shows the version our last status write made, nothing since: the reconcile
        that wrote it already saw everything in it, so this event needs no reconcile."""
        with self._lock:
            return self._written.pop(key, None) == body["metadata"].get("resourceVersion")

    def put_resource(self, body: Mapping[str, Any]) -> Key:
        metadata = body["metadata"]
        key = (str(body["kind"]), str(metadata["namespace"]), str(metadata["name"]))
        trimmed = {"apiVersion": body["apiVersion"], "kind": body["kind"], "metadata": _trim_metadata(metadata),
                   "spec": copy.deepcopy(dict(body.get("spec") or {})),
                   "status": copy.deepcopy(dict(body.get("status") or {}))}
        with self._lock:
            self._resources[key] = trimmed
        return key

    def drop_resource(self, key: Key) -> dict[str, Any] | None:
        with self._lock:
            self._written.pop(key, None)
            return self._resources.pop(key, None)

    def resource(self, key: Key) -> dict[str, Any] | None:
        with self._lock:
            found = self._resources.get(key)
            return copy.deepcopy(found) if found is not None else None

    def resource_keys(self) -> list[Key]:
        with self._lock:
            return list(self._resources)

    def put_rayjob(self, body: Mapping[str, Any], deleted: bool = False) -> Key | None:
        key = owner_key(body["metadata"])
        if key is None:
            return None
        trimmed = {"metadata": _trim_metadata(body["metadata"]), "spec": {"suspend": (body.get("spec") or {})
                                                                           .get("suspend", False)},
                   "status": copy.deepcopy(dict(body.get("status") or {}))}
        with self._lock:
            current = self._rayjobs.get(key)
            if deleted:
                # Only the RayJob we hold: the DELETED event of a replaced run's RayJob may arrive
                # after the new one's ADDED.
                if current is not None and current["metadata"].get("uid") == body["metadata"].get("uid"):
                    del self._rayjobs[key]
            else:
                self._rayjobs[key] = trimmed
        return key

    def rayjob(self, key: Key) -> dict[str, Any] | None:
        with self._lock:
            found = self._rayjobs.get(key)
            return copy.deepcopy(found) if found is not None else None

    def put_pod(self, body: Mapping[str, Any], deleted: bool = False) -> Key | None:
        key = owner_key(body["metadata"])
        if key is None:
            return None
        name = str(body["metadata"]["name"])
        with self._lock:
            pods = self._pods.setdefault(key, {})
            if deleted:
                pods.pop(name, None)
                if not pods:
                    del self._pods[key]
            else:
                pods[name] = _trim_pod(body)
        return key

    def pods(self, key: Key) -> list[dict[str, Any]]:
        with self._lock:
            return [copy.deepcopy(p) for p in self._pods.get(key, {}).values()]
