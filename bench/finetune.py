"""Fine-tuning vs training from scratch, on few labels (issue 28).

A ViT is trained on scikit-learn's digits 0-5 and logged to MLflow (registered). Then digits 6-9,
with 20 training images per class, are learned by the same network from random weights and from
that model (`pretrained: models:/...`): as is, with layer decay, and with the backbone frozen for
the first epochs. Each arm runs for every seed; the JSON keeps every epoch's val_acc, the plot shows
the mean curve per arm and each seed's best.

    python bench/finetune.py [--seeds 0 1 2] [--epochs 30] [--num-cpus 2] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.tracking import MlflowClient
from PIL import Image
from sklearn.datasets import load_digits

from raylight.api import TrainingJob, parse_resource
from raylight_trainer.driver import start_ray
from raylight_trainer.runtime.storage import Storage
from raylight_trainer.tracking.mlflow_runs import local_store_uri
from raylight_trainer.training.job import run_training_job
from raylight_trainer.training.run_state import RunSettings

ROOT = Path(__file__).resolve().parents[1]
SOURCE_CLASSES, TARGET_CLASSES = range(0, 6), range(6, 10)
MODEL = {"preset": "vit-nano", "depth": 2}
BASE_NAME = "bench-finetune-base"

# What each arm adds to the target job's spec; the source model is the same for every arm.
ARMS: dict[str, dict[str, Any]] = {
    "scratch": {"training": {"learningRate": 3e-3}},
    "fine-tune": {"pretrained": True, "training": {"learningRate": 1e-3}},
    "fine-tune, layerDecay 0.75": {"pretrained": True, "training": {"learningRate": 1e-3, "layerDecay": 0.75}},
    "fine-tune, freezeEpochs 3": {"pretrained": True, "training": {"learningRate": 1e-3, "freezeEpochs": 3}},
}


def write_digits(root: Path, classes: range, train_per_class: int | None) -> Path:
    """digits as an imagefolder with train/ and val/: the first `train_per_class` images of each class
    train (all but a fifth when None), the rest validate."""
    digits = load_digits()
    for label in classes:
        images = digits.images[digits.target == label]
        cut = train_per_class if train_per_class is not None else int(len(images) * 0.8)
        for index, pixels in enumerate(images):
            folder = root / ("train" if index < cut else "val") / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((pixels * 15.9375).astype(np.uint8), mode="L").save(folder / f"{index}.png")
    return root


def job(name: str, data_path: Path, model: dict[str, Any], training: dict[str, Any],
        registered: str = "") -> TrainingJob:
    doc = {"apiVersion": "raylight.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
           "spec": {"model": model, "data": {"dataset": "imagefolder", "path": str(data_path)},
                    "training": {"batchSize": 32, **training},
                    "mlflow": {"experiment": "bench-finetune", "registeredModelName": registered}}}
    resource = parse_resource(doc)
    assert isinstance(resource, TrainingJob)
    return resource


def run(resource: TrainingJob, tmp: Path) -> dict[str, Any]:
    settings = RunSettings(tracking_uri=local_store_uri(tmp), storage=Storage.at(tmp / "results"),
                           artifact_root=tmp / "mlruns", data_dir=str(tmp))
    started = time.monotonic()
    result = run_training_job(resource, settings)
    if result.state != "succeeded":
        raise SystemExit(f"{resource.metadata.name} {result.state}: {result.error}")
    history = sorted(MlflowClient(settings.tracking_uri).get_metric_history(result.run_id, "val_acc"),
                     key=lambda m: m.step)
    curve = [round(m.value, 4) for m in history]
    return {"val_acc": curve, "best_val_acc": max(curve), "wall_seconds": round(time.monotonic() - started, 1),
            "model_uri": result.model_uri}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30, help="target epochs (20 images per class)")
    parser.add_argument("--source-epochs", type=int, default=40)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    start_ray(args.num_cpus, verbose=False)
    report: dict[str, Any] = {
        "model": MODEL, "arms": ARMS, "seeds": args.seeds, "target_epochs": args.epochs,
        "source": {"classes": list(SOURCE_CLASSES), "epochs": args.source_epochs},
        "target": {"classes": list(TARGET_CLASSES), "train_images_per_class": 20},
        "machine": {"cpus": os.cpu_count(), "ray_cpus": args.num_cpus, "platform": platform.platform(),
                    "alone": "nothing else ran (one Ray instance, one job at a time)"},
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="raylight-bench-finetune-") as scratch:
        tmp = Path(scratch)
        source = write_digits(tmp / "source", SOURCE_CLASSES, None)
        target = write_digits(tmp / "target", TARGET_CLASSES, 20)
        base = run(job("source", source, MODEL, {"maxEpochs": args.source_epochs, "learningRate": 3e-3},
                       registered=BASE_NAME), tmp)
        report["source"]["best_val_acc"] = base["best_val_acc"]
        print("source", json.dumps(base), flush=True)
        for arm, adds in ARMS.items():
            model = {**MODEL, **({"pretrained": base["model_uri"]} if adds.get("pretrained") else {})}
            for seed in args.seeds:
                training = {"maxEpochs": args.epochs, "seed": seed, **adds["training"]}
                name = f"target-{list(ARMS).index(arm)}-{seed}"
                outcome = run(job(name, target, model, training), tmp)
                report["runs"].setdefault(arm, []).append({"seed": seed, **outcome})
                print(arm, seed, json.dumps(report["runs"][arm][-1]), flush=True)
    write(report, args.out)
    print(json.dumps(report["summary"], indent=2))


def write(report: dict[str, Any], out: Path) -> None:
    report["summary"] = {
        arm: {"best_val_acc_mean": round(statistics.mean(r["best_val_acc"] for r in runs), 4),
              "best_val_acc_stdev": round(statistics.pstdev(r["best_val_acc"] for r in runs), 4),
              "val_acc_epoch_5_mean": round(statistics.mean(r["val_acc"][min(4, len(r["val_acc"]) - 1)]
                                                            for r in runs), 4)}
        for arm, runs in report["runs"].items()}
    scratch = report["summary"]["scratch"]["best_val_acc_mean"]
    report["fine_tune_gain_points"] = {arm: round(100 * (s["best_val_acc_mean"] - scratch), 2)
                                       for arm, s in report["summary"].items() if arm != "scratch"}
    out.mkdir(parents=True, exist_ok=True)
    (out / "finetune.json").write_text(json.dumps(report, indent=2))
    plot(report, out / "finetune.png")


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, bests) = plt.subplots(1, 2, figsize=(10, 3.6))
    for index, (arm, runs) in enumerate(report["runs"].items()):
        color = f"C{index}"
        mean = np.mean([r["val_acc"] for r in runs], axis=0)
        curves.plot(range(1, len(mean) + 1), mean, label=arm, color=color)
        bests.scatter([index] * len(runs), [r["best_val_acc"] for r in runs], color=color, s=14)
        bests.bar(index, report["summary"][arm]["best_val_acc_mean"], color=color, alpha=0.35)
    curves.set_xlabel("epoch")
    curves.set_ylabel(f"val_acc (mean of {len(report['seeds'])} seeds)")
    curves.legend(fontsize=7)
    bests.set_xticks(range(len(report["runs"])), [arm.replace(", ", ",\n") for arm in report["runs"]], fontsize=7)
    bests.set_ylabel("best val_acc (bar: mean; dots: seeds)")
    bests.set_ylim(0, 1)
    fig.suptitle(f"digits {report['target']['classes']} from {report['target']['train_images_per_class']} images "
                 f"per class; source model: digits {report['source']['classes']} "
                 f"(val_acc {report['source']['best_val_acc']:.2f})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
