"""The operator's watch cache: what it keeps, and which events are its own status writes coming back."""

from __future__ import annotations

from typing import Any

from raylight.operator.cache import ObjectCache


def sweep(resource_version: str, phase: str = "Pending") -> dict[str, Any]:
    return {"apiVersion": "raylight.dev/v1alpha1", "kind": "TuneSweep",
            "metadata": {"name": "s", "namespace": "n", "resourceVersion": resource_version, "generation": 1,
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"trial": {}}, "status": {"phase": phase}}


def test_only_the_version_our_own_status_write_made_is_an_echo() -> None:
    cache = ObjectCache()
    key = cache.put_resource(sweep("10"))
    assert not cache.is_own_write(key, sweep("10")), "nothing written yet"
    cache.wrote_status(key, "11")
    assert not cache.is_own_write(key, sweep("12")), "someone wrote after us: that needs a reconcile"
    assert not cache.is_own_write(key, sweep("11")), "asked once: the record is gone with the first event"
    cache.wrote_status(key, "13")
    assert cache.is_own_write(key, sweep("13", "Running"))
    cache.wrote_status(key, "14")
    cache.drop_resource(key)
    assert not cache.is_own_write(key, sweep("14")), "a deleted resource forgets its writes"


def test_the_cache_keeps_no_managed_fields_and_hands_out_copies() -> None:
    cache = ObjectCache()
    key = cache.put_resource(sweep("10"))
    held = cache.resource(key)
    assert held is not None and "managedFields" not in held["metadata"]
    held["status"]["phase"] = "Changed"
    assert (cache.resource(key) or {})["status"]["phase"] == "Pending"
