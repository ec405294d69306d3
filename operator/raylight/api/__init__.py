"""Spec and status models shared by the CLI, the operator and the trainer (no torch, no ray)."""

from .base import API_VERSION, GROUP, VERSION, SpecModel
from .manifest import (
    KINDS,
    ManifestError,
    Resource,
    SpecError,
    TrainingJob,
    TuneSweep,
    load_manifests,
    parse_resource,
)
from .status import BestTrial, Condition, MlflowRef, TrainingJobStatus, TrialCounts, TuneSweepStatus
from .sweep import AshaSpec, Distribution, FifoSpec, SchedulerSpec, TuneSweepSpec, apply_overrides
from .trial import (
    VIT_PRESETS,
    DataSpec,
    FaultToleranceSpec,
    MlflowSpec,
    ModelSpec,
    ObjectiveSpec,
    ResourcesSpec,
    TrainingJobSpec,
    TrainingSpec,
    TrialSpec,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "VERSION",
    "VIT_PRESETS",
    "AshaSpec",
    "BestTrial",
    "Condition",
    "DataSpec",
    "Distribution",
    "FaultToleranceSpec",
    "FifoSpec",
    "ManifestError",
    "MlflowRef",
    "MlflowSpec",
    "ModelSpec",
    "ObjectiveSpec",
    "Resource",
    "ResourcesSpec",
    "SchedulerSpec",
    "SpecError",
    "SpecModel",
    "TrainingJob",
    "TrainingJobSpec",
    "TrainingJobStatus",
    "TrainingSpec",
    "TrialCounts",
    "TrialSpec",
    "TuneSweep",
    "TuneSweepSpec",
    "TuneSweepStatus",
    "apply_overrides",
    "load_manifests",
    "parse_resource",
]
