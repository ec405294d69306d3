"""Training-step throughput of our ViT vs timm's VisionTransformer of identical dimensions.

Both models get the same weights, batch, optimizer and precision, and are timed in the same
process, interleaved (A, B, A, B, ...) so that machine noise hits both alike. On a GPU it also
reports MFU: achieved training FLOP/s over the device's peak (pass --peak-tflops).

    python bench/vit_throughput.py [--device cuda] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer as TimmViT

from raylight_trainer.model import VisionTransformer, ViTConfig, training_flops_per_image

sys.path.insert(0, str(Path(__file__).resolve().parent / "gpu"))
from check import seconds_per_step  # bench/gpu/check.py: the one timing loop

CASES = {
    "cpu": [("vit-nano", 128), ("vit-cifar", 32), ("vit-tiny", 8)],
    "cuda": [("vit-cifar", 256), ("vit-tiny", 128), ("vit-small", 128), ("vit-base", 64)],
}


def timm_twin(cfg: ViTConfig) -> torch.nn.Module:
    return TimmViT(img_size=cfg.image_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans,
                   num_classes=cfg.num_classes, embed_dim=cfg.dim, depth=cfg.depth, num_heads=cfg.heads,
                   mlp_ratio=cfg.mlp_ratio)


def step_timer(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, device: str, dtype: torch.dtype):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def timed(steps: int) -> float:
        return seconds_per_step(step, steps, device)

    return timed


def run(device: str, rounds: int, steps: int, peak_tflops: float | None) -> dict:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    results = []
    for preset, batch in CASES[device]:
        cfg = ViTConfig.from_preset(preset, num_classes=100)
        ref = timm_twin(cfg).to(device).train()
        ours = VisionTransformer(cfg).to(device).train()
        ours.load_state_dict(ref.state_dict())
        images = torch.randn(batch, cfg.in_chans, cfg.image_size, cfg.image_size, device=device)
        labels = torch.randint(0, cfg.num_classes, (batch,), device=device)
        timers = {"raylight": step_timer(ours, images, labels, device, dtype),
                  "timm": step_timer(ref, images, labels, device, dtype)}
        for timer in timers.values():
            timer(2)  # warm-up: allocator, kernels, autotuning
        samples: dict[str, list[float]] = {name: [] for name in timers}
        for _ in range(rounds):
            for name, timer in timers.items():
                samples[name].append(timer(steps))
        row = {"preset": preset, "batch": batch, "image_size": cfg.image_size, "precision": str(dtype)}
        for name, times in samples.items():
            median = statistics.median(times)
            row[f"{name}_images_per_s"] = batch / median
            if peak_tflops:
                row[f"{name}_mfu"] = training_flops_per_image(cfg) * batch / median / (peak_tflops * 1e12)
        row["ratio"] = row["raylight_images_per_s"] / row["timm_images_per_s"]
        results.append(row)
        print(json.dumps(row))
    return {"device": device, "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor()
            or platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__, "rounds": rounds,
            "steps_per_round": steps, "results": results}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    labels = [f"{r['preset']}\nbatch {r['batch']}" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar([i - 0.2 for i in x], [r["raylight_images_per_s"] for r in rows], width=0.4, label="raylight ViT")
    ax.bar([i + 0.2 for i in x], [r["timm_images_per_s"] for r in rows], width=0.4, label="timm ViT")
    for i, r in enumerate(rows):
        ax.text(i, max(r["raylight_images_per_s"], r["timm_images_per_s"]), f"x{r['ratio']:.2f}", ha="center",
                va="bottom")
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("training images / s")
    ax.set_yscale("log")
    ax.set_title(f"Training step throughput on {report['device']} ({report['threads']} threads)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, help="device peak for MFU (e.g. 989 for H100 SXM bf16 dense)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.manual_seed(0)
    report = run(args.device, args.rounds, args.steps, args.peak_tflops)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"vit_throughput_{args.device}.json").write_text(json.dumps(report, indent=2))
    plot(report, args.out / f"vit_throughput_{args.device}.png")


if __name__ == "__main__":
    main()
