"""Resource requests that always fit the Ray cluster, or a clear error when they never can.

A one-worker trial trains in its Tune trial's own process (train.fit_in_trial), which reserves
the worker's CPU and GPU like any Tune trial; the rules below are for data-parallel trials.

Why this exists: a Tune trial that wraps a Ray Train `TorchTrainer` holds two reservations,
its own (the trial driver) and the worker group's placement group, which Tune does not see.
Tune therefore starts trials whose worker groups cannot all fit, and the ones left waiting
retry "worker group startup timed out" forever. Three rules prevent that:

1. The trial driver reserves no CPU or GPU (only a little memory), so it never takes the
   share a worker group needs (0.01 CPU per driver made 2 x (1 + 0.01) > 2 CPUs).
2. Concurrency is capped at the number of worker groups that fit in the cluster at once.
3. Ray Train frees the placement group of a trial that ASHA stops only through a cleaner
   actor that watches the controller via Ray's State API, which the dashboard serves; without
   it (`ray[tune,train]` does not install it) every stopped trial leaks its CPUs. We run Ray
   with the dashboard (`ray[default]`) and refuse to start a sweep when the State API is absent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from raylight.api import TrialSpec, apply_overrides

# What a trial driver reserves: it needs memory for Python and MLflow, and nothing else.
TRIAL_DRIVER_RESOURCES: dict[str, float] = {"cpu": 0.0, "memory": float(64 * 2**20)}
_EPSILON = 1e-6


class ResourceError(ValueError):
    """A request that can never be satisfied by this Ray cluster."""


def trial_demand(spec: TrialSpec) -> dict[str, float]:
    """CPU and GPU one run's worker group reserves."""
    res = spec.resources
    demand = {"CPU": res.workers * res.cpus_per_worker}
    if res.gpus_per_worker:
        demand["GPU"] = res.workers * res.gpus_per_worker
    return demand


def check_fits(spec: TrialSpec, cluster: Mapping[str, float], nodes: Iterable[Mapping[str, float]] = (),
               field: str = "spec.resources") -> None:
    """Raise ResourceError (naming the field) when one run can never be placed."""
    res = spec.resources
    worker = {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {})}
    for name, amount in trial_demand(spec).items():
        have = float(cluster.get(name, 0.0))
        if amount > have + _EPSILON:
            hint = ("lower workers or cpusPerWorker" if name == "CPU"
                    else "lower workers or gpusPerWorker, or run on a cluster with GPUs")
            raise ResourceError(
                f"{field}: one run needs {amount:g} {name} ({res.workers} workers x {worker[name]:g}) "
                f"but the Ray cluster has {have:g}; {hint}"
            )
    node_list = list(nodes)
    if node_list:
        for name, amount in worker.items():
            largest = max(float(node.get(name, 0.0)) for node in node_list)
            if amount > largest + _EPSILON:
                raise ResourceError(
                    f"{field}: one worker needs {amount:g} {name} but the largest Ray node has {largest:g}; "
                    f"lower the per-worker request and raise workers instead"
                )


def trains_in_trial(spec: TrialSpec) -> bool:
    """A one-worker run trains in its Tune trial's own process (train.fit_in_trial); only
    data-parallel runs need Ray Train's worker group."""
    return spec.resources.workers == 1


def trial_resources(config: dict[str, Any], base_trial: dict[str, Any]) -> Any:
    """What Tune reserves for a trial (its sampled config may change the resources): the worker's
    CPU and GPU for a trial that trains in its own process; for one that drives a worker group,
    only the driver's memory (rule 1 above)."""
    from ray.tune.execution.placement_groups import resource_dict_to_pg_factory

    spec = TrialSpec.model_validate(apply_overrides(base_trial, config))
    if not trains_in_trial(spec):
        return resource_dict_to_pg_factory(TRIAL_DRIVER_RESOURCES)
    res = spec.resources
    return resource_dict_to_pg_factory({"cpu": res.cpus_per_worker, "gpu": res.gpus_per_worker})


def concurrency_that_fits(spec: TrialSpec, cluster: Mapping[str, float], requested: int | None,
                          num_samples: int) -> int:
    """How many trials can run at once with every worker group placed (at least 1)."""
    check_fits(spec, cluster, field="spec.trial.resources")
    fits = min(
        math.floor(float(cluster.get(name, 0.0)) / amount + _EPSILON)
        for name, amount in trial_demand(spec).items()
        if amount > 0
    )
    wanted = requested if requested is not None else num_samples
    return max(1, min(fits, wanted, num_samples))


def state_api_problem() -> str | None:
    """Why Ray's State API cannot serve Ray Train's cleaner here, or None when it can.

    The cleaner runs in a Ray worker that finds the API through RAY_ADDRESS or by scanning this
    machine for Ray instances, so a second instance on the same machine breaks it just as a
    missing dashboard does.
    """
    try:
        from ray.util.state import list_actors

        list_actors(limit=1, timeout=10, raise_on_missing_output=False)
    except ConnectionError as exc:
        if "multiple active Ray instances" in str(exc):
            return ("another Ray instance runs on this machine, and Ray Train's cleanup of stopped trials "
                    "would talk to the wrong one; stop it (`ray stop`) or join it by setting RAY_ADDRESS")
        return f"Ray's State API is not answering ({exc})"
    except Exception as exc:
        return f"Ray's State API is not answering ({exc})"
    return None
