"""ASHA vs FIFO (no early stopping) on the same search space and samples.

Runs the quickstart sweep twice on a fresh local Ray (2 CPUs by default), once with its ASHA
scheduler and once with FIFO, and records total epochs trained, wall time and best val_acc.

    python bench/asha_vs_fifo.py [--manifest examples/quickstart.yaml] [--num-cpus 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from raylight.api import TuneSweep, load_manifests
from raylight.local.runner import start_ray
from raylight_trainer.runs import RunSettings
from raylight_trainer.sweep import run_sweep
from raylight_trainer.tracking import local_store_uri

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", type=Path, default=ROOT / "examples" / "quickstart.yaml")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    base = load_manifests(args.manifest)[0]
    assert isinstance(base, TuneSweep)
    start_ray(args.num_cpus, verbose=False)
    report: dict = {"manifest": str(args.manifest.relative_to(ROOT)), "num_cpus": args.num_cpus, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for scheduler in ("asha", "fifo"):
            doc = base.model_dump(mode="json", by_alias=True, exclude_none=True)
            doc["metadata"]["name"] = f"bench-{scheduler}"
            if scheduler == "fifo":
                doc["spec"]["scheduler"] = {"fifo": {}}
            sweep = TuneSweep.model_validate(doc)
            settings = RunSettings(tracking_uri=local_store_uri(Path(tmp)), storage_path=Path(tmp) / "results",
                                   artifact_root=Path(tmp) / "mlruns")
            result = run_sweep(sweep, settings)
            report["runs"][scheduler] = {
                "epochs_trained": sum(t.epochs for t in result.trials),
                "wall_seconds": round(result.wall_seconds, 1),
                "best_val_acc": result.best.metric if result.best else None,
                "trials": result.counts(),
            }
            print(scheduler, json.dumps(report["runs"][scheduler]))
    asha, fifo = report["runs"]["asha"], report["runs"]["fifo"]
    report["epoch_ratio"] = asha["epochs_trained"] / fifo["epochs_trained"]
    report["wall_ratio"] = asha["wall_seconds"] / fifo["wall_seconds"]
    report["val_acc_gap_points"] = 100 * (fifo["best_val_acc"] - asha["best_val_acc"])
    report["target_met"] = report["epoch_ratio"] <= 0.4 and report["val_acc_gap_points"] <= 1.0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "asha_vs_fifo.json").write_text(json.dumps(report, indent=2))
    plot(report, args.out / "asha_vs_fifo.png")
    print(json.dumps(report, indent=2))


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    for ax, key, label in zip(axes, ("epochs_trained", "wall_seconds", "best_val_acc"),
                              ("epochs trained", "wall time (s)", "best val_acc"), strict=True):
        ax.bar(list(runs), [runs[name][key] for name in runs], color=["tab:blue", "tab:gray"])
        ax.set_title(label)
    fig.suptitle(f"ASHA vs FIFO, same search space ({report['num_cpus']} CPUs)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
