"""Training-step time of the ViT with and without the fused bias + GELU, and against torch.compile.

Three variants with the same weights, batch and precision, timed in one process, interleaved
round by round (A, B, C, A, B, C, ...) so that machine noise hits all alike:
  unfused   - nn.Linear then F.gelu (the reference)
  fused     - model.fusedMlp: the autograd.Function (Triton kernels on CUDA, PyTorch elsewhere)
  compiled  - torch.compile of the unfused model (Inductor fuses what it can by itself)
Also records peak memory on CUDA. Results: bench/results/fused_mlp_<device>.json and .png.

    python bench/fused_mlp.py [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

from raylight_trainer.model import VisionTransformer, ViTConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vit_throughput import step_timer

CASES = {
    "cpu": [("vit-nano", 128), ("vit-cifar", 32)],
    "cuda": [("vit-cifar", 256), ("vit-small", 128), ("vit-base", 64)],
}


def variants(cfg: ViTConfig, device: str) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    unfused = VisionTransformer(cfg).to(device)
    fused = VisionTransformer(ViTConfig(**{**cfg.as_dict(), "fused_mlp": True})).to(device)
    fused.load_state_dict(unfused.state_dict())
    twin = VisionTransformer(cfg).to(device)
    twin.load_state_dict(unfused.state_dict())
    return {"unfused": unfused, "fused": fused, "compiled": torch.compile(twin)}  # type: ignore[dict-item]


def run(device: str, rounds: int, steps: int) -> dict:
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    report: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
                    "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "cases": []}
    for preset, batch in CASES[device]:
        cfg = ViTConfig.from_preset(preset, num_classes=100)
        images = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=device)
        labels = torch.randint(0, 100, (batch,), device=device)
        models = variants(cfg, device)
        # The three compute the same function: check before timing anything.
        with torch.no_grad():
            ref = models["unfused"](images)
            torch.testing.assert_close(models["fused"](images), ref, rtol=1e-3, atol=1e-3)
        timers = {name: step_timer(model, images, labels, device, dtype) for name, model in models.items()}
        for timer in timers.values():
            timer(3)  # warm up (and compile)
        times: dict[str, list[float]] = {name: [] for name in timers}
        peaks: dict[str, int] = {}
        for _ in range(rounds):
            for name, timer in timers.items():
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                times[name].append(timer(steps))
                if device == "cuda":
                    peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated())
        row: dict = {"preset": preset, "batch": batch}
        for name, values in times.items():
            row[f"{name}_ms"] = 1000 * statistics.median(values)
        row["fused_speedup"] = row["unfused_ms"] / row["fused_ms"]
        row["compiled_speedup"] = row["unfused_ms"] / row["compiled_ms"]
        if peaks:
            row["peak_mib"] = {name: peak / 2**20 for name, peak in peaks.items()}
        report["cases"].append(row)
        print(json.dumps(row))
    return report


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = report["cases"]
    labels = [f"{c['preset']}\nbatch {c['batch']}" for c in cases]
    width = 0.27
    fig, ax = plt.subplots(figsize=(1.8 + 2.2 * len(cases), 3.4))
    for offset, (name, color) in enumerate((("unfused", "tab:gray"), ("fused", "tab:blue"),
                                            ("compiled", "tab:orange"))):
        xs = [i + (offset - 1) * width for i in range(len(cases))]
        ax.bar(xs, [c["unfused_ms"] / c[f"{name}_ms"] for c in cases], width, label=name, color=color)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(cases)), labels)
    ax.set_ylabel("speed vs unfused (higher is better)")
    ax.set_title(f"ViT training step, fused bias+GELU ({report['device']}, {report['dtype']})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    report = run(args.device, args.rounds, args.steps)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"fused_mlp_{args.device}.json").write_text(json.dumps(report, indent=2))
    plot(report, args.out / f"fused_mlp_{args.device}.png")


if __name__ == "__main__":
    main()
