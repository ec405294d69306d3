"""ASHA vs FIFO (no early stopping) on the same search space and samples.

Runs the quickstart sweep on a fresh local Ray (2 CPUs by default) with its ASHA scheduler and
with FIFO, for each search seed (the same seed draws the same trial configs for both), and
records total epochs trained, wall time and best val_acc per pair, and their means. Asynchronous
ASHA decides on whichever trials report first, so a single pair says little: use several seeds.

    python bench/asha_vs_fifo.py [--manifest examples/quickstart.yaml] [--num-cpus 2] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from raylight.api import TuneSweep, load_manifests
from raylight_trainer.driver import start_ray
from raylight_trainer.runtime.storage import Storage
from raylight_trainer.tracking.mlflow_runs import local_store_uri
from raylight_trainer.training.run_state import RunSettings
from raylight_trainer.tuning.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]


def run_pair(base: TuneSweep, seed: int, tmp: Path) -> dict:
    pair: dict = {"search_seed": seed}
    for scheduler in ("asha", "fifo"):
        doc = base.model_dump(mode="json", by_alias=True, exclude_none=True)
        doc["metadata"]["name"] = f"bench-{scheduler}-{seed}"
        doc["spec"]["searchSeed"] = seed
        if scheduler == "fifo":
            doc["spec"]["scheduler"] = {"fifo": {}}
        sweep = TuneSweep.model_validate(doc)
        settings = RunSettings(tracking_uri=local_store_uri(tmp), storage=Storage.at(tmp / "results"),
                               artifact_root=tmp / "mlruns")
        result = run_sweep(sweep, settings)
        pair[scheduler] = {
            "epochs_trained": sum(t.epochs for t in result.trials),
            "wall_seconds": round(result.wall_seconds, 1),
            "best_val_acc": result.best.metric if result.best else None,
            "trials": result.counts(),
        }
        print(seed, scheduler, json.dumps(pair[scheduler]), flush=True)
    asha, fifo = pair["asha"], pair["fifo"]
    pair["epoch_ratio"] = asha["epochs_trained"] / fifo["epochs_trained"]
    pair["wall_ratio"] = asha["wall_seconds"] / fifo["wall_seconds"]
    pair["val_acc_gap_points"] = 100 * (fifo["best_val_acc"] - asha["best_val_acc"])
    pair["target_met"] = pair["epoch_ratio"] <= 0.4 and pair["val_acc_gap_points"] <= 1.0
    return pair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", type=Path, default=ROOT / "examples" / "quickstart.yaml")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--append", action="store_true",
                        help="keep the pairs already in OUT/asha_vs_fifo.json (same manifest and scheduler)")
    args = parser.parse_args()
    base = load_manifests(args.manifest)[0]
    assert isinstance(base, TuneSweep)
    start_ray(args.num_cpus, verbose=False)
    report: dict = {"manifest": str(args.manifest.resolve().relative_to(ROOT)), "num_cpus": args.num_cpus,
                    "scheduler": base.spec.scheduler.model_dump(mode="json", by_alias=True, exclude_none=True),
                    "pairs": []}
    previous = args.out / "asha_vs_fifo.json"
    if args.append and previous.exists():
        earlier = json.loads(previous.read_text())
        if (earlier.get("manifest"), earlier.get("scheduler")) != (report["manifest"], report["scheduler"]):
            raise SystemExit(f"{previous} measured another manifest or scheduler: not appending")
        report["pairs"] = [p for p in earlier["pairs"] if p["search_seed"] not in args.seeds]
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            report["pairs"].append(run_pair(base, seed, Path(tmp)))
            write(report, args.out)  # each finished pair is kept, even if a later one is interrupted
    print(json.dumps(report, indent=2))


def write(report: dict, out: Path) -> None:
    pairs = report["pairs"]
    report["mean"] = {key: statistics.mean(p[key] for p in pairs)
                      for key in ("epoch_ratio", "wall_ratio", "val_acc_gap_points")}
    report["worst_gap_points"] = max(p["val_acc_gap_points"] for p in pairs)
    report["pairs_meeting_target"] = sum(p["target_met"] for p in pairs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "asha_vs_fifo.json").write_text(json.dumps(report, indent=2))
    plot(report, out / "asha_vs_fifo.png")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = report["pairs"]
    seeds = [str(p["search_seed"]) for p in pairs]
    width = 0.38
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.3))
    for ax, key, label in zip(axes, ("epochs_trained", "wall_seconds", "best_val_acc"),
                              ("epochs trained", "wall time (s)", "best val_acc"), strict=True):
        for offset, (name, color) in enumerate((("asha", "tab:blue"), ("fifo", "tab:gray"))):
            xs = [i + (offset - 0.5) * width for i in range(len(pairs))]
            ax.bar(xs, [p[name][key] for p in pairs], width, label=name, color=color)
        ax.set_xticks(range(len(pairs)), [f"seed {s}" for s in seeds])
        ax.set_title(label)
        if key == "best_val_acc":
            low = min(min(p["asha"][key], p["fifo"][key]) for p in pairs)
            ax.set_ylim(max(0.0, low - 0.05), 1.0)
    axes[0].legend(fontsize=8)
    mean = report["mean"]
    fig.suptitle(f"ASHA vs FIFO, same samples ({report['num_cpus']} CPUs): mean epoch ratio "
                 f"{mean['epoch_ratio']:.2f}, mean gap {mean['val_acc_gap_points']:.2f} points", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
