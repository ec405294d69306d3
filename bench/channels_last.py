"""EfficientNet training steps on the CPU: channels_last (NHWC) vs the default contiguous layout.

The measurement behind `training.channelsLast`'s default (on for EfficientNet on a CPU). One
process, the two layouts interleaved (A, B, A, B, ...) so that machine noise hits both alike; the
same weights, batch and labels; forward, loss and backward of one step. Threads: 1 (a 1-CPU
worker, as the quickstart's) and all of the machine's. The GPU check (bench/gpu) measures the
same on a GPU, in bf16.

    python bench/channels_last.py [--rounds 8] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from raylight.api import ModelSpec
from raylight_trainer.model import config_from_spec, create_model

ROOT = Path(__file__).resolve().parents[1]
CASES = (("efficientnet-cifar", 32), ("efficientnet-b0", 64))


def step_time(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int = 3) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(images), labels).backward()
    return (time.perf_counter() - started) / steps


def measure(preset: str, size: int, batch: int, threads: int, rounds: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    spec = ModelSpec.model_validate({"architecture": "efficientnet", "preset": preset, "imageSize": size})
    cfg = config_from_spec(spec, 10, 3).as_dict()
    torch.manual_seed(0)
    contiguous = create_model("efficientnet", cfg)
    last = create_model("efficientnet", cfg)
    last.load_state_dict(contiguous.state_dict())
    last.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    images, labels = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    layouts = {"contiguous": (contiguous, images),
               "channels_last": (last, images.contiguous(memory_format=torch.channels_last))}
    times: dict[str, list[float]] = {name: [] for name in layouts}
    for round_index in range(rounds + 1):
        for name, (net, batch_images) in layouts.items():
            seconds = step_time(net, batch_images, labels)
            if round_index:  # the first round warms both up
                times[name].append(seconds)
    median = {name: statistics.median(values) for name, values in times.items()}
    return {"preset": preset, "image_size": size, "batch": batch, "threads": threads,
            "contiguous_step_ms": round(median["contiguous"] * 1000, 1),
            "channels_last_step_ms": round(median["channels_last"] * 1000, 1),
            "speedup": round(median["contiguous"] / median["channels_last"], 2),
            "step_s": {name: [round(v, 4) for v in values] for name, values in times.items()}}


def plot(cases: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{c['preset']}\n{c['image_size']}px, {c['threads']} thread(s)" for c in cases]
    x = range(len(cases))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar([i - 0.2 for i in x], [c["contiguous_step_ms"] for c in cases], 0.4, label="contiguous (NCHW)")
    ax.bar([i + 0.2 for i in x], [c["channels_last_step_ms"] for c in cases], 0.4, label="channels_last (NHWC)")
    for i, case in zip(x, cases, strict=True):
        ax.text(i + 0.2, case["channels_last_step_ms"], f"x{case['speedup']:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x), labels, fontsize=7)
    ax.set_ylabel("ms per training step (fwd + bwd)")
    ax.set_title(f"EfficientNet on the CPU, batch {cases[0]['batch']}, fp32", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    threads = sorted({1, os.cpu_count() or 1})
    cases = [measure(preset, size, args.batch, n, args.rounds) for preset, size in CASES for n in threads]
    report = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                          "torch": torch.__version__},
              "cases": cases}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "channels_last_cpu.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(cases, args.out / "channels_last_cpu.png")
    for case in cases:
        print(f"{case['preset']:<20} {case['image_size']:>3}px {case['threads']} thread(s): "
              f"{case['contiguous_step_ms']:>7.1f} -> {case['channels_last_step_ms']:>7.1f} ms  x{case['speedup']:.2f}")


if __name__ == "__main__":
    main()
