"""Distributed training of one run with Ray Train (TorchTrainer + Lightning DDP)."""

from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import ray.train
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, RayTrainReportCallback, prepare_trainer
from ray.train.torch import TorchTrainer
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from raylight.api import ObjectiveSpec, TrialSpec
from raylight.api.tags import worker_log

from ..data.datasets import Normalization, for_device_augmentation, load_data
from ..model import ModelConfig, config_from_spec, spec_image_size
from ..model.pretrained import load_into, read_checkpoint, start_normalization
from ..runtime import timeline
from ..runtime.storage import Storage
from ..runtime.timeline_hooks import EpochMarks
from ..tracking.logs import LogKeeper, kept_output, say
from ..tracking.mlflow_runs import MlflowEpochLogger, WandbEpochLogger
from .module import ImageClassifier

REPORTED_METRICS = ("train_loss", "val_loss", "val_acc", "val_f1", "val_auroc", "lr")
CHECKPOINT_FILE = RayTrainReportCallback.CHECKPOINT_NAME


@dataclass
class WorkerConfig:
    """What every training worker receives (plain data: it crosses process boundaries)."""

    spec: dict[str, Any]
    objective: dict[str, Any]
    data_dir: str | None = None
    tracking_uri: str | None = None
    run_id: str | None = None
    wandb: dict[str, Any] | None = None  # WandbEpochLogger's settings, when W&B is on
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_precision(requested: str, use_gpu: bool) -> str:
    if requested != "auto":
        return requested
    if use_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


class ShardSampler(Sampler[int]):
    """Every rank a disjoint, ordered share of the validation set, without the padding that
    DistributedSampler adds (a padded sample would be counted twice in F1 and AUROC)."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Any:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_callbacks(spec: TrialSpec, objective: ObjectiveSpec) -> list[pl.Callback]:
    """The spec's Lightning callbacks (checkpoints are Ray Train's: top-k by the objective)."""
    callbacks: list[pl.Callback] = []
    stopping = spec.callbacks.early_stopping
    if stopping is not None:
        callbacks.append(pl.callbacks.EarlyStopping(
            monitor=objective.metric, mode=objective.mode, patience=stopping.patience,
            min_delta=stopping.min_delta, check_on_train_epoch_end=False, verbose=False,
        ))
    return callbacks


class EpochLine(pl.Callback):
    """A line per epoch in the worker's log, which `raylight logs` shows (rank 0's: all ranks
    see the same synchronised metrics). The log is uploaded then, before the epoch is reported:
    a trial that ASHA stops there is ended without a chance to upload it later."""

    def __init__(self, max_epochs: int, keeper: LogKeeper | None = None) -> None:
        self.max_epochs, self.keeper = max_epochs, keeper

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank != 0 or trainer.sanity_checking:
            return
        metrics = " ".join(f"{name}={float(value):.4f}" for name, value in sorted(trainer.callback_metrics.items())
                           if name in REPORTED_METRICS)
        line = f"epoch {trainer.current_epoch + 1}/{self.max_epochs} {metrics}"
        if self.keeper is not None:
            self.keeper.say(line)
        else:
            say(line)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker; its output is kept on the run's MLflow run (`logs/`)."""
    worker = WorkerConfig(**config)
    timeline.for_trial(worker.extra.get("trial"))
    timeline.mark_process_start("worker_process")
    timeline.mark("worker_start")
    context = ray.train.get_context()
    path = TrainingPath(world_size=context.get_world_size(), rank=context.get_world_rank(),
                        checkpoint=ray.train.get_checkpoint(), in_trial=False)
    if not (worker.tracking_uri and worker.run_id):
        fit_worker(worker, path)
        return
    with kept_output(worker_log(path.rank), worker.tracking_uri, worker.run_id) as keeper:
        fit_worker(worker, path, keeper)


def fit_in_trial(worker: WorkerConfig) -> None:
    """A one-worker trial trains in its Tune trial's own process. Ray Train would add a
    controller, a placement group, a worker process and a process group: tens of seconds of
    start-up per trial for nothing a single process needs. Tune keeps its checkpoints (top k),
    resumes it from the last one and retries it after a failure (spec.faultTolerance)."""
    from ray import tune

    path = TrainingPath(world_size=1, rank=0, checkpoint=tune.get_checkpoint(), in_trial=True)
    timeline.mark("worker_start")
    assert worker.tracking_uri and worker.run_id
    with kept_output(worker_log(0), worker.tracking_uri, worker.run_id) as keeper:
        fit_worker(worker, path, keeper)


@dataclass
class TrainingPath:
    """Where one worker trains: in a Ray Train worker group (DDP), or in a Tune trial's process."""

    world_size: int
    rank: int
    checkpoint: Any  # ray's Checkpoint to resume from, or None
    in_trial: bool


class TuneReportCheckpoint(pl.Callback):
    """Each epoch's metrics and checkpoint to Tune, for a trial that trains in its own process:
    the same metrics and checkpoint file that RayTrainReportCallback gives Ray Train."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from ray import tune

        if trainer.sanity_checking:
            return
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
        metrics.update(epoch=trainer.current_epoch, step=trainer.global_step)
        with tempfile.TemporaryDirectory(prefix="raylight-checkpoint-") as directory:
            trainer.save_checkpoint(os.path.join(directory, CHECKPOINT_FILE), weights_only=False)
            # Tune copies the checkpoint into the trial's storage before report returns.
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


def fit_worker(worker: WorkerConfig, path: TrainingPath, keeper: LogKeeper | None = None) -> None:
    """One worker's part: data, model, Lightning trainer, fit (resuming if asked)."""
    spec = TrialSpec.model_validate(worker.spec)
    use_gpu = spec.resources.gpus_per_worker > 0
    torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))
    pl.seed_everything(spec.training.seed, workers=True, verbose=False)

    image_size = spec_image_size(spec.model)
    # The weights to start from are read once, by a fresh run. A resumed one normalises its images as
    # its own checkpoint says (models:/NAME/latest may name another version by now).
    source = spec.model.pretrained if path.checkpoint is None else None
    start = read_checkpoint(source, worker.data_dir, worker.tracking_uri) if source else None
    normalization = saved_normalization(path.checkpoint) if spec.model.pretrained and path.checkpoint else \
        start_normalization(spec.model, start)
    data = load_data(spec.data, image_size, worker.data_dir, normalization)
    on_device = for_device_augmentation(data) if spec.data.device_augmentation else None
    if spec.data.device_augmentation and on_device is None:
        say(f"data.deviceAugmentation: {spec.data.dataset} reads image files, so its images are transformed "
            "in the loaders")
    timeline.mark("data_loaded")
    model_cfg: ModelConfig = config_from_spec(spec.model, data.num_classes, data.in_chans)
    train_loader, val_loader = build_loaders(spec, on_device[0] if on_device else data, path)
    module = ImageClassifier(model=model_cfg.as_dict(), training=spec.training.model_dump(),
                             architecture=spec.model.architecture, class_names=list(data.class_names),
                             normalization=[list(data.mean), list(data.std)])
    if start is not None:
        started = load_into(module.net, start)
        say(started)
        if path.rank == 0:
            log_started_from(worker, started)
    if on_device is not None:
        module.batch_transforms = on_device[1], on_device[2]

    say(f"worker {path.rank + 1}/{path.world_size} on {socket.gethostname()}: {spec.data.dataset}, "
        f"{len(data.train)} training and {len(data.val)} validation images, "  # type: ignore[arg-type]
        f"{model_label(spec)} with {sum(p.numel() for p in module.parameters()):,} "
        "parameters")
    callbacks, logger_cb = worker_callbacks(worker, spec, path, keeper)
    distributed: dict[str, Any] = {"devices": 1} if path.in_trial else {
        "devices": "auto", "strategy": RayDDPStrategy(), "plugins": [RayLightningEnvironment()]}
    trainer = pl.Trainer(
        max_epochs=spec.training.max_epochs,
        accelerator="gpu" if use_gpu else "cpu",
        **distributed,
        precision=resolve_precision(spec.training.precision, use_gpu),  # type: ignore[arg-type]
        gradient_clip_val=spec.training.grad_clip,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,  # Ray keeps the checkpoints (the report callback)
        logger=False,
        use_distributed_sampler=False,
        # BatchNorm statistics over the global batch; torch synchronises them on GPUs only.
        sync_batchnorm=use_gpu and path.world_size > 1,
        num_sanity_val_steps=0,
        deterministic=False,
    )
    if not path.in_trial:
        trainer = prepare_trainer(trainer)
    if path.checkpoint is None:
        trainer.fit(module, train_loader, val_loader)
    else:
        # Resumed after a worker failure or an interrupted sweep: continue from the last epoch.
        with path.checkpoint.as_directory() as directory:
            trainer.fit(module, train_loader, val_loader, ckpt_path=os.path.join(directory, CHECKPOINT_FILE))
    if logger_cb is not None:
        logger_cb.flush()


def saved_normalization(checkpoint: Any) -> Normalization | None:
    """The (mean, std) a run's checkpoint was trained with (ImageClassifier's hyperparameter)."""
    with checkpoint.as_directory() as directory:
        # Our own run's file; mmap reads the small hyperparameters without the tensors' pages.
        saved = torch.load(os.path.join(directory, CHECKPOINT_FILE), map_location="cpu", mmap=True,
                           weights_only=False)
    mean_std = (saved.get("hyper_parameters") or {}).get("normalization")
    return (tuple(mean_std[0]), tuple(mean_std[1])) if mean_std else None


def model_label(spec: TrialSpec) -> str:
    model = spec.model
    return model.timm_name() if model.architecture == "timm" else model.preset or model.architecture


def log_started_from(worker: WorkerConfig, started: str) -> None:
    """What loading the pretrained weights did, in the run's params (where its MLflow run is)."""
    if not (worker.tracking_uri and worker.run_id):
        return
    from mlflow.tracking import MlflowClient

    from ..tracking.mlflow_runs import log_params

    log_params(MlflowClient(worker.tracking_uri), worker.run_id, {"pretrained.loaded": started})


MAX_LOADER_WORKERS = 8


def loader_workers(spec: TrialSpec) -> int:
    """DataLoader processes of one training worker: data.loaderWorkers, else the CPUs the worker
    reserved beyond the one its training process uses (a 1-CPU worker loads in-process: a loader
    process there would only take turns with training on the same core)."""
    if spec.data.loader_workers is not None:
        return spec.data.loader_workers
    return min(MAX_LOADER_WORKERS, max(0, int(spec.resources.cpus_per_worker) - 1))


def build_loaders(spec: TrialSpec, data: Any, path: TrainingPath) -> tuple[DataLoader, DataLoader]:
    """This worker's shards. The samplers are ours, not Lightning's (use_distributed_sampler=False):
    shuffled shards for training, unpadded ones for validation."""
    per_worker_batch = max(1, spec.training.batch_size // path.world_size)
    workers = loader_workers(spec)
    loader_args: dict[str, Any] = {
        "batch_size": per_worker_batch,
        "num_workers": workers,
        "persistent_workers": workers > 0,
        # Page-locked batches copy to the GPU asynchronously, overlapping the step before.
        "pin_memory": spec.resources.gpus_per_worker > 0,
    }
    drop_last = len(data.train) > per_worker_batch * path.world_size
    train_sampler: DistributedSampler = DistributedSampler(
        data.train, num_replicas=path.world_size, rank=path.rank, shuffle=True, seed=spec.training.seed)
    train_loader = DataLoader(data.train, sampler=train_sampler, drop_last=drop_last, **loader_args)
    val_sampler = ShardSampler(len(data.val), path.rank, path.world_size)
    return train_loader, DataLoader(data.val, sampler=val_sampler, **loader_args)


def worker_callbacks(worker: WorkerConfig, spec: TrialSpec, path: TrainingPath,
                     keeper: LogKeeper | None) -> tuple[list[pl.Callback], MlflowEpochLogger | None]:
    """The spec's callbacks, the epoch line, MLflow and W&B logging (rank 0), then the report to Ray."""
    callbacks = [*build_callbacks(spec, ObjectiveSpec.model_validate(worker.objective)),
                 EpochLine(spec.training.max_epochs, keeper)]
    logger_cb: MlflowEpochLogger | None = None
    if path.rank == 0 and worker.tracking_uri and worker.run_id:
        logger_cb = MlflowEpochLogger(worker.tracking_uri, worker.run_id, REPORTED_METRICS,
                                      lr_interval=spec.callbacks.lr_monitor.interval)
        callbacks.append(logger_cb)  # before the report: an epoch is logged even if the trial is stopped there
        if timeline.enabled():
            callbacks.append(EpochMarks("logged"))
    if path.rank == 0 and worker.wandb:
        callbacks.append(WandbEpochLogger(**worker.wandb, metric_names=REPORTED_METRICS))
    callbacks.append(TuneReportCheckpoint() if path.in_trial else RayTrainReportCallback())
    if timeline.enabled() and path.rank == 0:
        callbacks = [EpochMarks(), *callbacks, EpochMarks("reported")]
    return callbacks, logger_cb


def trial_part(spec: TrialSpec) -> TrialSpec:
    """A TrainingJobSpec carries objective, trackers and cluster too: workers get the trial part only."""
    return TrialSpec.model_validate(spec.model_dump(include=set(TrialSpec.model_fields)))


def worker_config(
    spec: TrialSpec,
    objective: ObjectiveSpec,
    *,
    tracking_uri: str | None,
    run_id: str | None,
    data_dir: str | None,
    wandb: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> WorkerConfig:
    return WorkerConfig(
        spec=trial_part(spec).model_dump(mode="json"),
        objective=objective.model_dump(),
        data_dir=data_dir,
        tracking_uri=tracking_uri,
        run_id=run_id,
        wandb=wandb,
        extra=extra or {},
    )


def build_trainer(
    spec: TrialSpec,
    objective: ObjectiveSpec,
    *,
    name: str,
    storage: Storage,
    tracking_uri: str | None,
    run_id: str | None,
    data_dir: str | None,
    callbacks: list[Any] | None = None,
    wandb: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> TorchTrainer:
    """A TorchTrainer for one run; its checkpoints live at storage/name (a directory or an object store)."""
    worker = worker_config(spec, objective, tracking_uri=tracking_uri, run_id=run_id, data_dir=data_dir,
                           wandb=wandb, extra=extra)
    resources = spec.resources
    per_worker: dict[str, float] = {"CPU": resources.cpus_per_worker}
    if resources.gpus_per_worker:
        per_worker["GPU"] = resources.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=worker.__dict__,
        scaling_config=ScalingConfig(
            num_workers=resources.workers,
            use_gpu=resources.gpus_per_worker > 0,
            resources_per_worker=per_worker,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage.path,
            storage_filesystem=storage.ray_filesystem,
            checkpoint_config=CheckpointConfig(
                num_to_keep=spec.fault_tolerance.checkpoints_to_keep,
                checkpoint_score_attribute=objective.metric,
                checkpoint_score_order=objective.mode,
            ),
            failure_config=FailureConfig(max_failures=spec.fault_tolerance.max_failures),
            callbacks=callbacks or [],
        ),
    )


def load_checkpoint_model(checkpoint_dir: str | Path) -> torch.nn.Module:
    """The network inside a Lightning checkpoint written by RayTrainReportCallback."""
    path = Path(checkpoint_dir)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    module = ImageClassifier.load_from_checkpoint(str(path), map_location="cpu")
    network = module.net.eval()
    # For model_card: the outputs, named, and how inputs are normalised.
    setattr(network, "class_names", module.class_names)  # noqa: B010
    setattr(network, "normalization", module.normalization)  # noqa: B010
    return network


def input_shape(model: torch.nn.Module) -> tuple[int, int, int]:
    """(C, H, W) that a trained model takes."""
    cfg: ModelConfig = model.cfg  # type: ignore[assignment]
    return (cfg.in_chans, cfg.image_size, cfg.image_size)


def architecture_of(cfg: ModelConfig) -> str:
    from ..model import EfficientNetConfig, TimmConfig

    return "timm" if isinstance(cfg, TimmConfig) else "efficientnet" if isinstance(cfg, EfficientNetConfig) else "vit"


def model_card(model: torch.nn.Module, dataset: str) -> dict[str, Any]:
    """What someone without Raylight needs to feed the logged model (its MLflow metadata): the
    network's config, and how images become its input."""
    from dataclasses import asdict

    from ..data.datasets import NORMALIZATION

    cfg: ModelConfig = model.cfg  # type: ignore[assignment]
    mean, std = getattr(model, "normalization", None) or NORMALIZATION[dataset]
    return {
        "architecture": architecture_of(cfg),
        "config": asdict(cfg),
        "dataset": dataset,
        "input": {"shape": list(input_shape(model)), "dtype": "float32",
                  "preprocess": "pixels scaled to [0, 1], resized to shape, then (x - mean) / std per channel",
                  "mean": list(mean), "std": list(std)},
        "output": "logits, one per class (argmax: the predicted class index)",
        # Names in label order: an output's index is its class's position here.
        "classes": list(getattr(model, "class_names", None) or [str(i) for i in range(cfg.num_classes)]),
    }
