"""The TuneSweep spec: a trial template, a search space over it, and the ASHA scheduler."""

from __future__ import annotations

import itertools
import math
from typing import Any

from pydantic import ConfigDict, Field, ValidationError, model_validator

from .base import FieldProblem, SpecModel, server_rules
from .cluster import ClusterSpec
from .trial import MlflowSpec, ObjectiveSpec, TrackingSpec, TrainingSpec, TrialSpec

# A search space is checked by validating the trial with every choice combination;
# past this many combinations only each value on its own is checked.
_MAX_COMBINATIONS_CHECKED = 512


class Distribution(SpecModel):
    """Exactly one of the distributions below."""

    # Exactly one key, checked by the API server too (CEL cannot see `choice`: its items have no type).
    model_config = ConfigDict(json_schema_extra={"minProperties": 1, "maxProperties": 1})

    uniform: list[float] | None = Field(default=None, min_length=2, max_length=2)
    """[low, high]: a float drawn uniformly."""
    loguniform: list[float] | None = Field(default=None, min_length=2, max_length=2)
    """[low, high], both > 0: a float drawn uniformly in log space."""
    randint: list[int] | None = Field(default=None, min_length=2, max_length=2)
    """[low, high]: an integer in low..high, both included."""
    choice: list[Any] | None = Field(default=None, min_length=1)
    """A value drawn from this list."""

    @model_validator(mode="after")
    def _exactly_one(self) -> Distribution:
        set_kinds = [kind for kind in ("uniform", "loguniform", "randint", "choice") if getattr(self, kind) is not None]
        if len(set_kinds) != 1:
            raise ValueError(
                f"give exactly one of uniform, loguniform, randint, choice (got {', '.join(set_kinds) or 'none'})"
            )
        bounds = self.uniform or self.loguniform or self.randint
        if bounds is not None:
            low, high = bounds
            if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
                raise ValueError(f"{set_kinds[0]} bounds [{low}, {high}] must be finite with low < high")
            if self.loguniform is not None and low <= 0:
                raise ValueError(f"loguniform bounds [{low}, {high}] must both be > 0")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("uniform", "loguniform", "randint", "choice") if getattr(self, k) is not None)

    def probe_values(self) -> list[Any]:
        """Values that bound what this distribution can produce (for validation)."""
        if self.choice is not None:
            return list(self.choice)
        bounds = self.uniform or self.loguniform or self.randint
        assert bounds is not None
        return list(bounds)


class AshaSpec(SpecModel):
    """Asynchronous Successive Halving: stops poorly performing trials early."""

    grace_period: int = Field(default=1, ge=1)
    """Epochs every trial runs before it can be stopped."""
    reduction_factor: float = Field(default=2, ge=1.5, le=16)
    """Keep 1/reductionFactor of the trials at each rung."""
    max_t: int | None = Field(default=None, ge=1)
    """Epochs at which a trial ends (default: the trial's maxEpochs)."""


class FifoSpec(SpecModel):
    """Run every trial to maxEpochs (no early stopping)."""


class SchedulerSpec(SpecModel):
    """Trial scheduler: exactly one of asha or fifo."""

    model_config = server_rules(
        ("has(self.asha) != has(self.fifo)", "set exactly one of scheduler.asha or scheduler.fifo"),
    )

    asha: AshaSpec | None = None
    fifo: FifoSpec | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SchedulerSpec:
        if (self.asha is None) == (self.fifo is None):
            raise ValueError("set exactly one of scheduler.asha or scheduler.fifo")
        return self


_DEFAULT_MAX_EPOCHS = TrainingSpec.model_fields["max_epochs"].default
_GRACE_PERIOD_WHY = (
    "ASHA lets every trial run gracePeriod epochs and ends it at maxT (scheduler.asha.maxT, else "
    "trial.training.maxEpochs), so it could never stop one; lower gracePeriod or raise maxT"
)


class TuneSweepSpec(SpecModel):
    """A hyperparameter search: trials drawn from searchSpace, scheduled by ASHA."""

    model_config = server_rules(
        (
            "!has(self.maxConcurrentTrials) || self.maxConcurrentTrials <= self.numSamples",
            "maxConcurrentTrials must not exceed numSamples",
        ),
        (
            "!has(self.scheduler) || !has(self.scheduler.asha) || !has(self.trial) || !has(self.trial.callbacks)"
            " || !has(self.trial.callbacks.earlyStopping)",
            "trial.callbacks.earlyStopping: ASHA already stops weak trials early; remove earlyStopping or use "
            "scheduler fifo",
        ),
        (
            "!has(self.scheduler) || !has(self.scheduler.asha) || !has(self.scheduler.asha.gracePeriod) || "
            "self.scheduler.asha.gracePeriod <= (has(self.scheduler.asha.maxT) ? self.scheduler.asha.maxT : "
            "(has(self.trial) && has(self.trial.training) && has(self.trial.training.maxEpochs) ? "
            f"self.trial.training.maxEpochs : {_DEFAULT_MAX_EPOCHS}))",
            f"scheduler.asha.gracePeriod must not exceed maxT: {_GRACE_PERIOD_WHY}",
            ".scheduler.asha.gracePeriod",
        ),
    )

    trial: TrialSpec = Field(default_factory=TrialSpec)
    """The TrainingJob spec every trial starts from."""
    search_space: dict[str, Distribution] = Field(default_factory=dict)
    """Dotted path into the trial spec (e.g. training.learningRate) -> distribution."""
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    num_samples: int = Field(default=8, ge=1, le=10_000)
    """Number of trials."""
    max_concurrent_trials: int | None = Field(default=None, ge=1, le=10_000)
    """Trials running at once. Locally (default: as many as fit) it is lowered to what fits; on
    Kubernetes (default: 1) the worker group is sized to run this many at once."""
    scheduler: SchedulerSpec = Field(default_factory=lambda: SchedulerSpec(asha=AshaSpec()))
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    """Extra trackers; each trial is its own W&B run, grouped by the sweep's name."""
    search_seed: int | None = Field(default=0, ge=0)
    """Seed of the random search (unset: a different draw each run)."""
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    suspend: bool = False
    """On a cluster: true stops the sweep and frees its pods and GPUs; false resumes it where it stopped."""

    @model_validator(mode="after")
    def _check_counts(self) -> TuneSweepSpec:
        if self.max_concurrent_trials is not None and self.max_concurrent_trials > self.num_samples:
            raise ValueError(
                f"maxConcurrentTrials {self.max_concurrent_trials} exceeds numSamples {self.num_samples}"
            )
        asha = self.scheduler.asha
        if asha is not None and asha.grace_period > self.max_t():
            raise FieldProblem("scheduler.asha.gracePeriod",
                               f"{asha.grace_period} exceeds maxT {self.max_t()}: {_GRACE_PERIOD_WHY}")
        if self.scheduler.asha is not None and self.trial.callbacks.early_stopping is not None:
            raise ValueError(
                "trial.callbacks.earlyStopping: ASHA already stops weak trials early; remove earlyStopping "
                "or use scheduler fifo"
            )
        return self

    def max_t(self) -> int:
        asha = self.scheduler.asha
        return asha.max_t if asha and asha.max_t else self.trial.training.max_epochs


def search_space_errors(spec: TuneSweepSpec) -> list[tuple[str, str]]:
    """(field path, message) for each search-space entry that cannot apply to the trial spec."""
    errors: list[tuple[str, str]] = []
    base = spec.trial.wire()
    valid_paths: dict[str, list[Any]] = {}
    for path, dist in spec.search_space.items():
        field_path = f"spec.searchSpace.{path}"
        if not _path_exists(TrialSpec, path):
            errors.append((field_path, f"{path} is not a field of the trial spec; {_suggest(path)}"))
            continue
        for value in dist.probe_values():
            problem = _apply_error(base, {path: value})
            if problem:
                errors.append((field_path, f"value {value!r} from {dist.kind} is invalid for {path}: {problem}"))
                break
        else:
            valid_paths[path] = dist.probe_values()
    # Values valid one at a time can still clash (e.g. dim not divisible by heads).
    if not errors and valid_paths:
        combos = list(itertools.islice(itertools.product(*valid_paths.values()), _MAX_COMBINATIONS_CHECKED + 1))
        if len(combos) <= _MAX_COMBINATIONS_CHECKED:
            for combo in combos:
                overrides = dict(zip(valid_paths, combo, strict=True))
                problem = _apply_error(base, overrides)
                if problem:
                    shown = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
                    errors.append(("spec.searchSpace", f"the combination {shown} is invalid: {problem}"))
                    break
    return errors


def apply_overrides(trial_wire: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of a trial spec (wire form) with dotted-path values set."""
    result: dict[str, Any] = _deep_copy(trial_wire)
    for path, value in overrides.items():
        node = result
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return result


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _apply_error(base: dict[str, Any], overrides: dict[str, Any]) -> str | None:
    try:
        TrialSpec.model_validate(apply_overrides(base, overrides))
    except ValidationError as exc:
        first = exc.errors()[0]
        return str(first["msg"]).removeprefix("Value error, ")
    return None


def _path_exists(model: type[SpecModel], path: str) -> bool:
    current: Any = model
    for key in path.split("."):
        if not (isinstance(current, type) and issubclass(current, SpecModel)):
            return False
        fields = {info.alias or name: info for name, info in current.model_fields.items()}
        if key not in fields:
            return False
        current = fields[key].annotation
    return not (isinstance(current, type) and issubclass(current, SpecModel))


def _leaf_paths(model: type[SpecModel], prefix: str = "") -> list[str]:
    paths = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{info.alias or name}"
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, SpecModel):
            paths.extend(_leaf_paths(annotation, key + "."))
        else:
            paths.append(key)
    return paths


def _suggest(path: str) -> str:
    import difflib

    close = difflib.get_close_matches(path, _leaf_paths(TrialSpec), n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]}?"
    sections = sorted({p.split(".")[0] for p in _leaf_paths(TrialSpec)})
    return f"paths start with one of {', '.join(sections)} (e.g. training.learningRate)"
