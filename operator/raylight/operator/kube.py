"""The few Kubernetes API calls the operator makes, on the official client.

Objects are written with server-side apply under one field manager: applying the same object
again changes nothing, and fields other managers own (a GitOps tool's, KubeRay's) are left alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from raylight.api import GROUP, VERSION

from .builder import FIELD_MANAGER

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
PLURALS = {"TrainingJob": "trainingjobs", "TuneSweep": "tunesweeps"}
_STATUS_ATTEMPTS = 8


def load_config(kubeconfig: str | None = None) -> None:
    """In a pod: its ServiceAccount; elsewhere: KUBECONFIG / ~/.kube/config."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig)


class Kube:
    def __init__(self, pool_size: int = 32) -> None:
        configuration = client.Configuration.get_default_copy()
        # Handlers run in a thread pool; a bigger pool keeps them from queueing on connections.
        configuration.connection_pool_maxsize = pool_size
        self.api = client.ApiClient(configuration)
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)

    def apply_configmap(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        self.core.patch_namespaced_config_map(
            meta["name"], meta["namespace"], body, field_manager=FIELD_MANAGER, force=True, _content_type=APPLY,
        )

    def apply_rayjob(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        self.custom.patch_namespaced_custom_object(
            "ray.io", "v1", meta["namespace"], "rayjobs", meta["name"], body,
            field_manager=FIELD_MANAGER, force=True, _content_type=APPLY,
        )

    def get_rayjob(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found = self.custom.get_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", name)
            return cast(dict[str, Any], found)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def delete_rayjob(self, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def update_status(
        self, kind: str, namespace: str, name: str, change: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Read-modify-write of one of our resources' status: (status before, fields written).

        `change` gets the current status and returns the fields to set ({}: nothing to write).
        The resourceVersion is the patch's precondition: when another writer got in between (the
        RayJob watch and the reconciler both write conditions) the write is redone on the fresh
        status instead of overwriting it."""
        for _ in range(_STATUS_ATTEMPTS):
            body = cast(dict[str, Any], self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURALS[kind], name))
            current = dict(body.get("status") or {})
            update = change(current)
            if not update:
                return current, {}
            patch = {"metadata": {"resourceVersion": body["metadata"]["resourceVersion"]}, "status": update}
            try:
                self.custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, PLURALS[kind], name, patch,
                    field_manager=FIELD_MANAGER, _content_type=MERGE,
                )
                return current, update
            except ApiException as exc:
                if exc.status != 409:
                    raise
        raise RuntimeError(f"the status of {kind} {namespace}/{name} kept changing under {_STATUS_ATTEMPTS} writes")


def api_message(exc: ApiException) -> str:
    """The API server's own message (it names the field), not the HTTP dump."""
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except ValueError:
        return str(exc.reason)


def refused_by_schema(exc: ApiException) -> bool:
    """The object itself is wrong (it will be on every retry), not the server.

    Server-side apply answers a value of the wrong type with a 500 "failed to create typed patch
    object" instead of a 422."""
    return exc.status in (400, 422) or (exc.status == 500 and "failed to create typed patch object" in api_message(exc))
