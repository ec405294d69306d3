"""MLflow logging overhead per training step, as a fraction of the step time.

Trains the same model for the same steps with Lightning, with and without the MlflowEpochLogger
callback that training runs use (asynchronous batch logging to a real MLflow store), alternating
the two, and reports the per-step difference over the per-step time.

    python bench/mlflow_overhead.py [--epochs 5] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from mlflow.tracking import MlflowClient
from torch.utils.data import DataLoader

from raylight.api import TrialSpec
from raylight_trainer.data.datasets import load_data
from raylight_trainer.model import ViTConfig
from raylight_trainer.tracking.mlflow_runs import MlflowEpochLogger, ensure_experiment, local_store_uri
from raylight_trainer.training.module import ImageClassifier
from raylight_trainer.training.workers import REPORTED_METRICS

ROOT = Path(__file__).resolve().parents[1]


class TimedLogger(MlflowEpochLogger):
    """The training runs' logger, with the time its hooks hold the training loop recorded."""

    blocked = 0.0

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        start = time.perf_counter()
        super().on_train_epoch_end(trainer, pl_module)
        self.blocked += time.perf_counter() - start

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        start = time.perf_counter()
        super().on_train_end(trainer, pl_module)
        self.blocked += time.perf_counter() - start


def fit_seconds(spec: TrialSpec, epochs: int, logger: MlflowEpochLogger | None) -> tuple[float, int]:
    data = load_data(spec.data, 16)
    cfg = ViTConfig.from_spec(spec.model, data.num_classes, data.in_chans)
    module = ImageClassifier(cfg.as_dict(), spec.training.model_dump())
    loader = DataLoader(data.train, batch_size=spec.training.batch_size, shuffle=True, drop_last=True)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[logger] if logger else [], limit_val_batches=2)
    start = time.perf_counter()
    trainer.fit(module, loader, DataLoader(data.val, batch_size=256))
    return time.perf_counter() - start, int(trainer.global_step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = TrialSpec.model_validate({"model": {"preset": "vit-nano", "depth": 4}, "training": {"batchSize": 32}})
    with tempfile.TemporaryDirectory() as tmp:
        uri = local_store_uri(Path(tmp))
        client = MlflowClient(uri)
        experiment = ensure_experiment(client, "overhead", Path(tmp) / "mlruns")
        samples: dict[str, list[float]] = {"without": [], "with": []}
        blocked: list[float] = []
        steps = 0
        # Once per process, not per step: the store's engine and schema check. Paid before timing.
        client.log_metric(client.create_run(experiment).info.run_id, "warmup", 0.0)
        for _ in range(args.rounds):
            seconds, steps = fit_seconds(spec, args.epochs, None)
            samples["without"].append(seconds)
            logger = TimedLogger(uri, client.create_run(experiment).info.run_id, REPORTED_METRICS)
            seconds, steps = fit_seconds(spec, args.epochs, logger)
            samples["with"].append(seconds)
            blocked.append(logger.blocked)
    without, with_logging = statistics.median(samples["without"]), statistics.median(samples["with"])
    report = {
        "epochs": args.epochs,
        "steps_per_fit": steps,
        "step_seconds_without": without / steps,
        "step_seconds_with": with_logging / steps,
        # What logging holds the training loop for, per step, over the step time: the target.
        "blocking_fraction": statistics.median(blocked) / without,
        # End to end, including the logging thread's CPU share; noisy on 2 shared cores.
        "end_to_end_fraction": (with_logging - without) / without,
        "end_to_end_spread": (max(samples["without"]) - min(samples["without"])) / without,
        "samples_seconds": samples,
        "target": "blocking_fraction < 0.02",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mlflow_overhead.json").write_text(json.dumps(report, indent=2))
    plot(report, args.out / "mlflow_overhead.png")
    print(json.dumps(report, indent=2))


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for x, name in enumerate(("without", "with")):
        per_step = [1000 * s / report["steps_per_fit"] for s in report["samples_seconds"][name]]
        ax.scatter([x] * len(per_step), per_step, color="tab:gray")
        ax.bar(x, statistics.median(per_step), alpha=0.6)
    ax.set_xticks([0, 1], ["no logging", "MLflow logging"])
    ax.set_ylabel("ms per training step")
    ax.set_title(f"Blocking: {100 * report['blocking_fraction']:.2f}% of step time, "
                 f"end to end: {100 * report['end_to_end_fraction']:+.2f}%")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
