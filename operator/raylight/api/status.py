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
    """MLflow tracking URI the run reports to."""
    experiment_id: str | None = None
    """MLflow experiment id."""
    run_id: str | None = None
    """The run of a TrainingJob, or the parent run of a TuneSweep."""
    model_uri: str | None = None
    """The best model, once logged: models:/NAME/VERSION when registered, else models:/ID. A torch.export
    graph that plain mlflow and torch load (mlflow.pytorch.load_model or mlflow.pyfunc.load_model)."""


class TrialCounts(SpecModel):
    """Trials by state."""

    total: int = 0
    """numSamples."""
    pending: int = 0
    """Trials not started yet."""
    running: int = 0
    """Trials training now."""
    succeeded: int = 0
    """Trials that ran to maxEpochs."""
    stopped_early: int = 0
    """Trials ASHA stopped before maxEpochs."""
    failed: int = 0
    """Trials that ended with an error."""


class BestTrial(SpecModel):
    """The best trial so far by the objective."""

    id: str
    """Ray Tune trial id (also the MLflow child run's raylight.trial_id tag)."""
    metric: float
    """Best objective value the trial reached."""
    config: dict[str, Any] = Field(default_factory=dict)
    """The sampled search-space values (dotted path -> value)."""


class ResourceStatus(SpecModel):
    """What both kinds report: lifecycle, conditions and the RayJob behind them."""

    phase: Phase = "Pending"
    """Pending, Running, Succeeded, Failed or Suspended."""
    conditions: list[Condition] = Field(default_factory=list)
    """Latest observations of the resource's state."""
    observed_generation: int | None = None
    """The metadata.generation this status describes."""
    ray_job_name: str | None = None
    """The KubeRay RayJob that runs it."""
    run_hash: str | None = None
    """Identity of the spec of the run this status describes (the spec without suspend)."""
    start_time: str | None = None
    """RFC 3339 time training started."""
    completion_time: str | None = None
    """RFC 3339 time it succeeded or failed."""
    root_cause: str | None = None
    """Why a failed run failed, as the trainer recorded it (the last line of the error)."""
    mlflow: MlflowRef = Field(default_factory=MlflowRef)


class TrainingJobStatus(ResourceStatus):
    epoch: int | None = None
    """Last completed epoch."""
    metric: float | None = None
    """Objective value at the last completed epoch."""


class TuneSweepStatus(ResourceStatus):
    trials: TrialCounts = Field(default_factory=TrialCounts)
    progress: str | None = None
    """Finished trials / numSamples, e.g. 5/12."""
    best_trial: BestTrial | None = None


class SweepProgress(SpecModel):
    """What a sweep's driver keeps on its MLflow parent run while it runs (tag raylight.progress,
    JSON): the operator reads this one run, by its id, instead of searching the trial runs."""

    trials: TrialCounts
    best_trial: BestTrial | None = None
