"""Requests that fit the cluster, or errors that say why they never will."""

from __future__ import annotations

import pytest

from raylight.api import TrialSpec
from raylight_trainer.training.resources import ResourceError, check_fits, concurrency_that_fits


def trial(**resources: float) -> TrialSpec:
    return TrialSpec.model_validate({"resources": resources})


def test_concurrency_is_capped_to_what_fits() -> None:
    cluster = {"CPU": 2.0}
    assert concurrency_that_fits(trial(workers=1, cpusPerWorker=1), cluster, None, 12) == 2
    assert concurrency_that_fits(trial(workers=1, cpusPerWorker=1), cluster, 8, 12) == 2
    assert concurrency_that_fits(trial(workers=2, cpusPerWorker=1), cluster, 2, 12) == 1
    assert concurrency_that_fits(trial(workers=1, cpusPerWorker=0.5), cluster, None, 3) == 3


def test_fractional_gpus_share_a_gpu() -> None:
    cluster = {"CPU": 16.0, "GPU": 1.0}
    assert concurrency_that_fits(trial(workers=1, gpusPerWorker=0.25, cpusPerWorker=1), cluster, None, 10) == 4


def test_request_that_can_never_fit_names_the_field() -> None:
    with pytest.raises(ResourceError, match=r"spec.trial.resources: one run needs 3 CPU .* has 2"):
        concurrency_that_fits(trial(workers=3, cpusPerWorker=1), {"CPU": 2.0}, None, 4)
    with pytest.raises(ResourceError, match="GPU"):
        check_fits(trial(workers=1, gpusPerWorker=1), {"CPU": 2.0})


def test_worker_larger_than_any_node() -> None:
    with pytest.raises(ResourceError, match="largest Ray node has 2"):
        check_fits(trial(workers=1, cpusPerWorker=3), {"CPU": 4.0}, [{"CPU": 2.0}, {"CPU": 2.0}])


def test_a_one_worker_trial_reserves_its_worker_a_worker_group_trial_only_its_driver() -> None:
    """A one-worker trial trains in its Tune trial's process, which therefore holds the worker's CPU
    and GPU (fractional GPUs pack as before); a data-parallel trial's workers are Ray Train's
    placement group, so its Tune trial holds only the driver's memory. The sampled config counts."""
    from raylight_trainer.training.resources import TRIAL_DRIVER_RESOURCES, trial_resources

    base = {"resources": {"workers": 1, "cpusPerWorker": 2}}
    assert trial_resources({"resources.gpusPerWorker": 0.25}, base).required_resources == {"CPU": 2.0, "GPU": 0.25}
    assert trial_resources({}, base).required_resources == {"CPU": 2.0}
    group = trial_resources({"resources.workers": 2}, base).required_resources
    assert group.get("CPU", 0.0) == 0.0 and "GPU" not in group
    assert group["memory"] == TRIAL_DRIVER_RESOURCES["memory"]
