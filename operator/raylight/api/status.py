"""Status of TrainingJob and TuneSweep, after KubeRay and Kubernetes conventions."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .base import SpecModel

Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]


class Condition(SpecModel):
    """A Kubernetes-style condition (kubectl wait --for=condition=TYPE works on it)."""

    type: str
    """Ready, Running, Succeeded, Failed, Suspended, or SpecValid."""
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    """CamelCase machine-readable reason."""
    message: str = ""
    """Human-readable detail."""
    last_transition_time: str | None = None
    """RFC 3339 time of the last status change."""


class MlflowRef(SpecModel):
    """Where the results are in MLflow."""

    tracking_uri: str | None = None
    experiment_id: str | None = None
    run_id: str | None = None
    """The run of a TrainingJob, or the parent run of a TuneSweep."""


class TrialCounts(SpecModel):
    """Trials by state."""

    total: int = 0
    pending: int = 0
    running: int = 0
    succeeded: int = 0
    """Trials that ran to maxEpochs."""
    stopped_early: int = 0
    """Trials ASHA stopped before maxEpochs."""
    failed: int = 0


class BestTrial(SpecModel):
    """The best trial so far by the objective."""

    id: str
    metric: float
    config: dict[str, Any] = Field(default_factory=dict)
    """The sampled search-space values (dotted path -> value)."""


class ResourceStatus(SpecModel):
    """What both kinds report: lifecycle, conditions and the RayJob behind them."""

    phase: Phase = "Pending"
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    """The metadata.generation this status describes."""
    ray_job_name: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    mlflow: MlflowRef = Field(default_factory=MlflowRef)


class TrainingJobStatus(ResourceStatus):
    epoch: int | None = None
    """Last completed epoch."""
    metric: float | None = None
    """Objective value at the last completed epoch."""


class TuneSweepStatus(ResourceStatus):
    trials: TrialCounts = Field(default_factory=TrialCounts)
    best_trial: BestTrial | None = None
