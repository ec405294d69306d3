"""Where a sweep trial's time goes: a timeline of each trial's stages, and the quickstart's wall time.

Runs `raylight run` on a small fixed sweep (the quickstart's ViT and data, FIFO, 4 trials of 4
epochs, 2 at a time on 2 CPUs) with RAYLIGHT_TIMELINE set, so every process of the run marks its
stages (raylight_trainer/runtime/timeline.py), and turns the marks into per-trial segments: the trial
actor's start-up, its MLflow run, the Ray Train worker group, data, Lightning's set-up, the first
epoch (training, validation, logging, report and checkpoint), a later epoch, and the end. With
--quickstart it also runs examples/quickstart.yaml and records its wall time and results.

Results go to OUT/trial_overhead.json under --label (measure `before` on the old code with
--source pointing at its checkout, then `after`, one right after the other) and a stacked bar
per label to OUT/trial_overhead.png.

    python bench/trial_overhead.py --label after [--source /tmp/before] [--quickstart]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
NUM_CPUS = 2
EPOCHS = 4

# (segment, from mark, to mark): the first epoch's marks carry epoch=1.
SEGMENTS = [
    ("trial actor start (scheduling, process, imports)", "ready", "trial_start"),
    ("MLflow child run", "trial_start", "run_opened"),
    ("Ray Train worker group", "run_opened", "worker_start"),
    ("data", "worker_start", "data_loaded"),
    ("Lightning set-up", "data_loaded", "epoch_start@1"),
    ("epoch 1: training", "epoch_start@1", "val_start@1"),
    ("epoch 1: validation", "val_start@1", "val_end@1"),
    ("epoch 1: epoch line, MLflow", "val_end@1", "logged@1"),
    ("epoch 1: report, checkpoint", "logged@1", "reported@1"),
]
LATER = [("training", "epoch_start", "val_start"), ("validation", "val_start", "val_end"),
         ("epoch line, MLflow", "val_end", "logged"), ("report, checkpoint", "logged", "reported")]


def bench_sweep() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    doc["metadata"]["name"] = "trial-overhead"
    spec = doc["spec"]
    spec["trial"]["model"]["depth"] = 4
    spec["trial"]["training"]["maxEpochs"] = EPOCHS
    spec["searchSpace"] = {"training.learningRate": {"loguniform": [1.0e-3, 5.0e-3]}}
    spec.update(numSamples=4, maxConcurrentTrials=2, scheduler={"fifo": {}})
    spec["mlflow"] = {"experiment": "trial-overhead", "registeredModelName": ""}
    return doc


def run(manifest: Path, work: Path, source: Path, timeline: Path | None) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(source / "operator"), str(source / "trainer_image")])
    if timeline is not None:
        env["RAYLIGHT_TIMELINE"] = str(timeline)
    command = [sys.executable, "-m", "raylight.cli", "run", str(manifest), "--output", "json",
               "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}", "--storage-path", str(work / "results"),
               "--num-cpus", str(NUM_CPUS)]
    started, started_at = time.monotonic(), time.time()
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.monotonic() - started
    if timeline is not None:  # the command's own span, in the run's marks
        with timeline.open("a", encoding="utf-8") as marks:
            for event, at in (("command_started", started_at), ("command_ended", time.time())):
                marks.write(json.dumps({"t": at, "event": event, "trial": "-"}) + "\n")
    start = 0 if done.stdout.startswith("{") else done.stdout.find("\n{") + 1
    if done.returncode != 0 or start < 0:
        raise SystemExit(f"raylight run {manifest.name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary, _ = json.JSONDecoder().raw_decode(done.stdout[start:])
    return {"command_wall_s": round(wall, 1), "summary": summary}


def trial_marks(path: Path) -> dict[str, dict[str, float]]:
    """Per trial: the first time of each mark, epoch marks keyed `event@epoch`."""
    marks: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        mark = json.loads(line)
        if not mark.get("trial"):
            continue
        key = mark["event"] + (f"@{mark['epoch']}" if "epoch" in mark else "")
        marks.setdefault(mark["trial"], {}).setdefault(key, mark["t"])
    # When Tune could start the trial: it had begun and a slot was free (the last other trial to
    # end before it started). Tune's own "started" comes once the trial's function runs.
    began = marks.get("-", {}).get("tune_start")
    for trial, own in marks.items():
        if trial != "-" and began is not None and "trial_start" in own:
            freed = [m["ended"] for t, m in marks.items() if t != trial and m.get("ended", own["trial_start"])
                     < own["trial_start"]]
            own["ready"] = max([began, *freed])
    return marks


def segments(marks: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, begin, end in SEGMENTS:
        if begin in marks and end in marks:
            out[name] = marks[end] - marks[begin]
        elif end == "worker_start" and "worker_start" not in marks:
            out[name] = 0.0  # no worker group: the trial trains in its own process
    later = [e for e in range(2, EPOCHS + 1) if f"reported@{e}" in marks and f"epoch_start@{e}" in marks]
    for name, begin, end in LATER:
        values = [marks[f"{end}@{e}"] - marks[f"{begin}@{e}"] for e in later]
        if values:
            out[f"later epoch: {name}"] = statistics.median(values)
    gaps = [marks[f"epoch_start@{e}"] - marks[f"reported@{e - 1}"] for e in later]
    if gaps:
        out["later epoch: between epochs"] = statistics.median(gaps)
    last = max((e for e in range(1, EPOCHS + 1) if f"reported@{e}" in marks), default=None)
    if last is not None and "ended" in marks:
        out["trial end (slot still held)"] = marks["ended"] - marks[f"reported@{last}"]
    if "started" in marks and "ended" in marks:
        out["slot held"] = marks["ended"] - marks.get("ready", marks["started"])
    return out


RUN_SEGMENTS = [("command start (Python, the CLI's imports)", "command_started", "ray_init"),
                ("Ray start (with the driver's imports meanwhile, where they overlap)", "ray_init", "ray_ready"),
                ("between", "ray_ready", "sweep_start"),
                ("sweep set-up (MLflow parent run, Tune)", "sweep_start", "tune_start"),
                ("first trials' actors start", "tune_start", "first_started"),
                ("trials", "first_started", "tune_end"), ("trials' outcomes", "tune_end", "outcomes_read"),
                ("child runs ended", "outcomes_read", "child_runs_ended"),
                ("best checkpoint loaded", "child_runs_ended", "best_model_loaded"),
                ("best model logged", "best_model_loaded", "model_logged"),
                ("attributions (meanwhile), waited for", "model_logged", "best_model_logged"),
                ("final counts", "best_model_logged", "sweep_end"),
                ("summary, Ray's shutdown, exit", "sweep_end", "command_ended")]


def run_segments(run: dict[str, float], trials: dict[str, dict[str, float]]) -> dict[str, float]:
    """The whole command's time: Ray's start, the sweep's set-up, its trials, its end."""
    started = [m["started"] for m in trials.values() if "started" in m]
    marks = {**run, **({"first_started": min(started)} if started else {})}
    return {name: round(marks[end] - marks[begin], 3) for name, begin, end in RUN_SEGMENTS
            if begin in marks and end in marks}


def startup(marks: dict[str, float]) -> dict[str, float] | None:
    """The issue's measure: child run created to first epoch reported, minus one epoch."""
    needed = ["run_opened", "reported@1", "reported@2", "reported@3"]
    if not all(k in marks for k in needed):
        return None
    epoch = statistics.median(marks[f"reported@{e}"] - marks[f"reported@{e - 1}"]
                              for e in range(2, EPOCHS + 1) if f"reported@{e}" in marks)
    return {"startup_s": marks["reported@1"] - marks["run_opened"] - epoch, "epoch_s": epoch}


def measure_timeline(source: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="raylight-trial-overhead-") as scratch:
        work = Path(scratch)
        manifest = work / "trial-overhead.yaml"
        manifest.write_text(yaml.safe_dump(bench_sweep()))
        timeline = work / "timeline.jsonl"
        result = run(manifest, work, source, timeline)
        marks = trial_marks(timeline)
    run_marks = marks.pop("-", {})
    per_trial = {trial: segments(m) for trial, m in sorted(marks.items())}
    origin = min(t for m in marks.values() for t in m.values())
    raw = {trial: {k: round(t - origin, 3) for k, t in sorted(m.items(), key=lambda item: item[1])}
           for trial, m in sorted(marks.items())}
    startups = {trial: s for trial, m in sorted(marks.items()) if (s := startup(m))}
    names = sorted({name for seg in per_trial.values() for name in seg})
    median = {name: round(statistics.median(seg[name] for seg in per_trial.values() if name in seg), 3)
              for name in names}
    return {
        "run_segments_s": run_segments(run_marks, marks),
        "sweep": {"trials": 4, "epochs": EPOCHS, "concurrent": 2, "num_cpus": NUM_CPUS},
        "wall_s": result["summary"]["wallSeconds"],
        "command_wall_s": result["command_wall_s"],
        "median_segments_s": median,
        "median_startup_s": round(statistics.median(s["startup_s"] for s in startups.values()), 2),
        "median_epoch_s": round(statistics.median(s["epoch_s"] for s in startups.values()), 2),
        "per_trial": {t: {k: round(v, 3) for k, v in seg.items()} for t, seg in per_trial.items()},
        "marks_s": raw,  # every trial's marks, in seconds after the first
    }


def measure_quickstart(source: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="raylight-quickstart-") as scratch:
        result = run(ROOT / "examples" / "quickstart.yaml", Path(scratch), source, None)
    summary = result["summary"]
    return {"wall_s": summary["wallSeconds"], "command_wall_s": result["command_wall_s"],
            "best_val_acc": summary["bestMetric"], "trials": summary["trials"],
            "epochs_trained": summary["epochsTrained"]}


def measure_epoch(epochs: int = 4, rounds: int = 3) -> dict[str, Any]:
    """A trial's epoch (Lightning, the trial's callbacks, an MLflow run, a checkpoint each epoch) vs a
    plain PyTorch loop (same model, optimiser, schedule, data, batch, one thread), in this process,
    alternating; the medians of the epochs after each run's first."""
    import torch

    from raylight.api import TrialSpec
    from raylight_trainer.data.datasets import load_data
    from raylight_trainer.model import config_from_spec

    torch.set_num_threads(1)
    spec = TrialSpec.model_validate(bench_sweep()["spec"]["trial"])
    spec.training.max_epochs = epochs
    data = load_data(spec.data, int(spec.model.resolved()["image_size"]))
    model = config_from_spec(spec.model, data.num_classes, data.in_chans).as_dict()
    times: dict[str, list[float]] = {"plain": [], "trial": []}
    with tempfile.TemporaryDirectory(prefix="raylight-epoch-") as scratch:
        for _ in range(rounds):
            times["plain"] += plain_loop(spec, data, model)[1:]
            times["trial"] += lightning_loop(spec, data, model, Path(scratch))[1:]
    plain, trial = statistics.median(times["plain"]), statistics.median(times["trial"])
    # This machine's epochs vary by tens of percent from one minute to the next (a shared VM):
    # the fastest epochs of each are the steadier comparison.
    fastest = min(times["trial"]) / min(times["plain"])
    return {"plain_epoch_s": round(plain, 3), "trial_epoch_s": round(trial, 3), "ratio": round(trial / plain, 3),
            "fastest_ratio": round(fastest, 3), "epochs": times}


def plain_loop(spec: Any, data: Any, model: dict[str, Any]) -> list[float]:
    import pytorch_lightning as pl
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from raylight_trainer.training.module import ImageClassifier, parameter_groups, warmup_cosine

    pl.seed_everything(spec.training.seed, verbose=False)
    net = ImageClassifier(model=model, training=spec.training.model_dump()).net
    training = spec.training
    optimizer = torch.optim.AdamW(parameter_groups(net, training.weight_decay), lr=training.learning_rate,
                                  fused=True)  # as the trial's module does
    train = DataLoader(data.train, batch_size=training.batch_size, shuffle=True, drop_last=True)
    val = DataLoader(data.val, batch_size=training.batch_size)
    total = len(train) * training.max_epochs
    warmup = int(training.warmup_epochs * len(train))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total))
    times = []
    for _ in range(training.max_epochs):
        started = time.perf_counter()
        net.train()
        for images, labels in train:
            loss = F.cross_entropy(net(images), labels, label_smoothing=training.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if training.grad_clip:
                torch.nn.utils.clip_grad_norm_(net.parameters(), training.grad_clip)
            optimizer.step()
            schedule.step()
        net.eval()
        correct = 0
        with torch.no_grad():
            for images, labels in val:
                correct += int((net(images).argmax(1) == labels).sum())
        times.append(time.perf_counter() - started)
    return times


def lightning_loop(spec: Any, data: Any, model: dict[str, Any], scratch: Path) -> list[float]:
    """The trial's own Lightning set-up (train.fit_worker's), Tune's report left out."""
    import pytorch_lightning as pl
    from mlflow.tracking import MlflowClient

    from raylight_trainer.tracking.mlflow_runs import MlflowEpochLogger, ensure_experiment, local_store_uri
    from raylight_trainer.training.module import ImageClassifier
    from raylight_trainer.training.workers import (
        CHECKPOINT_FILE,
        REPORTED_METRICS,
        EpochLine,
        TrainingPath,
        build_loaders,
    )

    class SaveCheckpoint(pl.Callback):  # what TuneReportCheckpoint writes, each epoch
        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            trainer.save_checkpoint(scratch / CHECKPOINT_FILE, weights_only=False)

    class EpochTimes(pl.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.started = 0.0

        def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.started = time.perf_counter()

        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.times.append(time.perf_counter() - self.started)

    pl.seed_everything(spec.training.seed, verbose=False)
    uri = local_store_uri(scratch)
    client = MlflowClient(uri)
    run_id = client.create_run(ensure_experiment(client, "epoch", scratch / "mlruns")).info.run_id
    train, val = build_loaders(spec, data, TrainingPath(world_size=1, rank=0, checkpoint=None, in_trial=True))
    module = ImageClassifier(model=model, training=spec.training.model_dump())
    timer = EpochTimes()
    callbacks = [EpochLine(spec.training.max_epochs), MlflowEpochLogger(uri, run_id, REPORTED_METRICS),
                 SaveCheckpoint(), timer]
    trainer = pl.Trainer(max_epochs=spec.training.max_epochs, accelerator="cpu", devices=1, callbacks=callbacks,
                         gradient_clip_val=spec.training.grad_clip, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, logger=False,
                         use_distributed_sampler=False, num_sanity_val_steps=0)
    trainer.fit(module, train, val)
    return timer.times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", required=True, help="the name these figures go under (before, after)")
    parser.add_argument("--source", type=Path, default=ROOT, help="the checkout to measure (default: this one)")
    parser.add_argument("--quickstart", action="store_true", help="also run examples/quickstart.yaml")
    parser.add_argument("--epoch", action="store_true", help="also time an epoch against a plain PyTorch loop")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    path = args.out / "trial_overhead.json"
    report = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    entry: dict[str, Any] = {"source": str(args.source), "machine": f"{os.cpu_count()} CPUs",
                             "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    entry["timeline"] = measure_timeline(args.source.resolve())
    print(json.dumps(entry["timeline"]["median_segments_s"], indent=2), flush=True)
    if args.quickstart:
        entry["quickstart"] = measure_quickstart(args.source.resolve())
        print(json.dumps(entry["quickstart"]), flush=True)
    if args.epoch:
        entry["epoch"] = measure_epoch()
        print(json.dumps({k: v for k, v in entry["epoch"].items() if k != "epochs"}), flush=True)
    report["runs"][args.label] = entry
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    plot(report, args.out / "trial_overhead.png")


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(report["runs"])
    order = [name for name, _, _ in SEGMENTS] + [f"later epoch: {n}" for n, _, _ in LATER] + \
        ["later epoch: between epochs", "trial end (slot still held)"]
    colors = plt.get_cmap("tab20").colors
    fig, (ax, whole) = plt.subplots(2, 1, figsize=(10, 5.6 + 1.2 * len(labels)))
    plot_command(report, whole)
    for row, label in enumerate(labels):
        median = report["runs"][label]["timeline"]["median_segments_s"]
        left = 0.0
        for index, name in enumerate(order):
            width = median.get(name, 0.0)
            ax.barh(row, width, left=left, color=colors[index % len(colors)], label=name if row == 0 else None)
            left += width
        timeline = report["runs"][label]["timeline"]
        ax.text(left, row, f"  start-up {timeline['median_startup_s']:.1f} s, epoch {timeline['median_epoch_s']:.1f} s",
                va="center", fontsize=8)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (median trial: start-up, first epoch, one later epoch, end)")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.55))
    ax.set_title("Where a quickstart trial's time goes (2 CPUs, 2 trials at a time)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_command(report: dict[str, Any], ax: Any) -> None:
    """The whole command's time per label, stacked by its stages (where the label measured them)."""
    import matplotlib.pyplot as plt

    labels = list(report["runs"])
    colors = plt.get_cmap("tab20b").colors
    for row, label in enumerate(labels):
        segments = report["runs"][label]["timeline"]["run_segments_s"]
        left = 0.0
        for index, (name, _, _) in enumerate(RUN_SEGMENTS):
            width = segments.get(name, 0.0)
            ax.barh(row, width, left=left, color=colors[index % len(colors)], label=name if row == 0 else None)
            left += width
        ax.text(left, row, f"  {report['runs'][label]['timeline']['command_wall_s']:.1f} s", va="center", fontsize=8)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (the whole `raylight run` of the 4-trial sweep; unmarked stages where a label lacks them)")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.35))


if __name__ == "__main__":
    main()
