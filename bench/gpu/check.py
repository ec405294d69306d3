"""The GPU check: one call on a GPU machine (or `--cpu`, the same parts at toy sizes on the CPU).

Parts, each timed in one process with its variants interleaved (A, B, A, B, ...) so that machine
noise hits them alike:
  vit        our ViT vs timm's of identical dimensions (same weights, batch, bf16), eager and
             torch.compile: images/s and MFU (FLOPs counted by torch.utils.flop_counter over one
             training step, over the device's dense bf16 peak);
  mlp        fusedMlp (Triton) vs unfused vs torch.compile of the unfused MLP, fwd+bwd, peak memory;
  effnet     EfficientNet-B0 bf16, channels_last vs not;
  optim      AdamW's fused kernel vs its foreach one, ViT training step (the largest case);
  augment    vit-cifar fed by a DataLoader of CIFAR-size uint8 images in memory: each image
             augmented in the loader's worker processes (the default) vs whole batches on the
             device (data.deviceAugmentation), images/s of the fed training step;
  run        an end-to-end `raylight run`: 4 trials packed on one GPU (gpusPerWorker 0.25) and a
             1-worker bf16 TrainingJob, wall time and GPU utilisation (nvidia-smi), where Ray,
             MLflow and pydantic are importable.
Writes check_<device>.json and check_<device>.png under --out and prints a short table.

    bench/gpu/run [--cpu] [--parts vit,mlp,effnet,optim,augment,run] [--budget-s 420]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
# Dense bf16 tensor-core peaks from the vendors' datasheets (FLOP/s), by a part of the device's name.
DENSE_BF16_PEAK = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12,
                   "L4": 121e12, "A10G": 70e12}


@dataclass(frozen=True)
class Sizes:
    """What each part runs: the GPU's real sizes, or toys that exercise the same code on a CPU."""

    device: str
    dtype: torch.dtype
    vit_cases: tuple[tuple[str, int, dict[str, int]], ...]  # preset, batch, config overrides
    effnet: tuple[str, int, dict[str, float]]
    augment: tuple[str, int, int]  # ViT preset, batch, loader worker processes
    rounds: int
    steps: int
    compile: bool


GPU = Sizes("cuda", torch.bfloat16, (("vit-small", 256, {}), ("vit-base", 128, {})),
            ("efficientnet-b0", 128, {}), ("vit-cifar", 512, 8), rounds=5, steps=10, compile=True)
CPU = Sizes("cpu", torch.bfloat16, (("vit-tiny", 4, {"image_size": 32, "depth": 2}),),
            ("efficientnet-b0", 4, {"image_size": 32, "depth_multiplier": 0.25}), ("vit-nano", 8, 1),
            rounds=2, steps=1, compile=True)


def train_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, sizes: Sizes,
               fused: bool | None = None) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    return lambda: train_on(model, optimizer, images, labels, sizes)


def train_on(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
             sizes: Sizes) -> None:
    """One training step: forward and loss under autocast, backward, AdamW."""
    with torch.autocast(device_type=sizes.device, dtype=sizes.dtype):
        loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def seconds_per_step(step: Callable[[], None], steps: int, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def interleaved(steps: dict[str, Callable[[], None]], sizes: Sizes) -> dict[str, dict[str, float]]:
    """Median seconds per step and peak memory of each variant, timed in turns after a warm-up
    (which also compiles)."""
    for step in steps.values():
        seconds_per_step(step, 2, sizes.device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    peaks: dict[str, float] = {}
    for _ in range(sizes.rounds):
        for name, step in steps.items():
            if sizes.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times[name].append(seconds_per_step(step, sizes.steps, sizes.device))
            if sizes.device == "cuda":
                peaks[name] = max(peaks.get(name, 0.0), torch.cuda.max_memory_allocated() / 2**20)
    return {name: {"s_per_step": statistics.median(values), **({"peak_mib": peaks[name]} if name in peaks else {})}
            for name, values in times.items()}


def step_flops(step: Callable[[], None]) -> int:
    """FLOPs of one training step as PyTorch's own counter sees them (matmuls, convolutions, SDPA)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def device_peak(sizes: Sizes, override_tflops: float | None) -> tuple[str, float | None]:
    if sizes.device != "cuda":
        return platform.processor() or platform.machine(), None
    name = torch.cuda.get_device_name()
    if override_tflops:
        return name, override_tflops * 1e12
    return name, next((peak for part, peak in DENSE_BF16_PEAK.items() if part in name), None)


def vit_part(sizes: Sizes, peak: float | None, deadline: float) -> list[dict[str, Any]]:
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    from raylight_trainer.model import VisionTransformer, ViTConfig

    rows = []
    for preset, batch, overrides in sizes.vit_cases:
        cfg = ViTConfig.from_preset(preset, num_classes=1000, **overrides)
        for compiled in (False, True) if sizes.compile else (False,):
            if time.monotonic() > deadline:
                rows.append({"preset": preset, "compiled": compiled, "skipped": "over the time budget"})
                continue
            torch.manual_seed(0)
            timm_model = TimmViT(img_size=cfg.image_size, patch_size=cfg.patch_size, num_classes=cfg.num_classes,
                                 embed_dim=cfg.dim, depth=cfg.depth, num_heads=cfg.heads,
                                 mlp_ratio=cfg.mlp_ratio).to(sizes.device)
            ours = VisionTransformer(cfg).to(sizes.device)
            ours.load_state_dict(timm_model.state_dict())
            images = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=sizes.device)
            labels = torch.randint(0, cfg.num_classes, (batch,), device=sizes.device)
            flops = step_flops(train_step(ours, images, labels, sizes))
            models = {"raylight": ours, "timm": timm_model}
            if compiled:
                models = {name: torch.compile(model) for name, model in models.items()}  # type: ignore[misc]
            timed = interleaved({name: train_step(model, images, labels, sizes) for name, model in models.items()},
                                sizes)
            row: dict[str, Any] = {"preset": preset, "batch": batch, "image_size": cfg.image_size,
                                   "compiled": compiled, "flops_per_step": flops}
            for name, result in timed.items():
                row[f"{name}_images_per_s"] = batch / result["s_per_step"]
                row[f"{name}_mfu"] = flops / result["s_per_step"] / peak if peak else None
                if "peak_mib" in result:
                    row[f"{name}_peak_mib"] = result["peak_mib"]
            row["ratio_to_timm"] = row["raylight_images_per_s"] / row["timm_images_per_s"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def mlp_part(sizes: Sizes, deadline: float) -> list[dict[str, Any]]:
    from raylight_trainer.model import VisionTransformer, ViTConfig

    rows = []
    for preset, batch, overrides in sizes.vit_cases:
        if time.monotonic() > deadline:
            rows.append({"preset": preset, "skipped": "over the time budget"})
            continue
        cfg = ViTConfig.from_preset(preset, num_classes=1000, **overrides)
        torch.manual_seed(0)
        unfused = VisionTransformer(cfg).to(sizes.device)
        fused = VisionTransformer(dataclasses.replace(cfg, fused_mlp=True)).to(sizes.device)
        fused.load_state_dict(unfused.state_dict())
        twin = VisionTransformer(cfg).to(sizes.device)
        twin.load_state_dict(unfused.state_dict())
        variants = {"unfused": unfused, "fused": fused}
        if sizes.compile:
            variants["compiled"] = torch.compile(twin)  # type: ignore[assignment]
        images = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=sizes.device)
        labels = torch.randint(0, cfg.num_classes, (batch,), device=sizes.device)
        with torch.no_grad():  # the same function: checked before anything is timed
            torch.testing.assert_close(fused(images), unfused(images), rtol=1e-3, atol=1e-3)
        timed = interleaved({name: train_step(model, images, labels, sizes) for name, model in variants.items()},
                            sizes)
        row: dict[str, Any] = {"preset": preset, "batch": batch}
        for name, result in timed.items():
            row[f"{name}_ms"] = 1000 * result["s_per_step"]
            if "peak_mib" in result:
                row[f"{name}_peak_mib"] = result["peak_mib"]
        row["fused_speedup"] = row["unfused_ms"] / row["fused_ms"]
        if "compiled_ms" in row:
            row["fused_vs_compiled"] = row["compiled_ms"] / row["fused_ms"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def effnet_part(sizes: Sizes) -> dict[str, Any]:
    from raylight_trainer.model import EfficientNet, EfficientNetConfig

    preset, batch, overrides = sizes.effnet
    cfg = EfficientNetConfig.from_preset(preset, num_classes=1000, **overrides)
    torch.manual_seed(0)
    plain = EfficientNet(cfg).to(sizes.device)
    last = EfficientNet(cfg).to(sizes.device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    last.load_state_dict(plain.state_dict())
    images = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=sizes.device)
    labels = torch.randint(0, cfg.num_classes, (batch,), device=sizes.device)
    timed = interleaved({
        "contiguous": train_step(plain, images, labels, sizes),
        "channels_last": train_step(last, images.contiguous(memory_format=torch.channels_last), labels, sizes),
    }, sizes)
    row: dict[str, Any] = {"preset": preset, "batch": batch, "image_size": cfg.image_size}
    for name, result in timed.items():
        row[f"{name}_images_per_s"] = batch / result["s_per_step"]
    row["channels_last_speedup"] = row["channels_last_images_per_s"] / row["contiguous_images_per_s"]
    print(json.dumps(row), flush=True)
    return row


def optim_part(sizes: Sizes) -> dict[str, Any]:
    from raylight_trainer.model import VisionTransformer, ViTConfig

    preset, batch, overrides = sizes.vit_cases[-1]
    cfg = ViTConfig.from_preset(preset, num_classes=1000, **overrides)
    torch.manual_seed(0)
    foreach = VisionTransformer(cfg).to(sizes.device)
    fused = VisionTransformer(cfg).to(sizes.device)
    fused.load_state_dict(foreach.state_dict())
    images = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=sizes.device)
    labels = torch.randint(0, cfg.num_classes, (batch,), device=sizes.device)
    timed = interleaved({"foreach": train_step(foreach, images, labels, sizes, fused=False),
                         "fused": train_step(fused, images, labels, sizes, fused=True)}, sizes)
    row: dict[str, Any] = {"preset": preset, "batch": batch,
                           **{f"{name}_ms": 1000 * result["s_per_step"] for name, result in timed.items()}}
    row["fused_adamw_speedup"] = row["foreach_ms"] / row["fused_ms"]
    print(json.dumps(row), flush=True)
    return row


def augment_part(sizes: Sizes) -> dict[str, Any]:
    """The same training step fed by two loaders over the same uint8 images: per-image transforms in
    worker processes, or uint8 batches (a quarter of the bytes to pin and copy) transformed on the
    device. Both shift and flip (TensorTransform's training steps); one step per call, the loaders'
    workers kept between rounds."""
    from torch.utils.data import DataLoader

    if not _importable("torchvision"):  # raylight_trainer.data.datasets's ImageFolder reader needs it
        return {"skipped": "torchvision is not importable here"}
    from raylight_trainer.data.datasets import CIFAR_MEAN, CIFAR_STD, BatchTransform, TensorImages, TensorTransform
    from raylight_trainer.model import VisionTransformer, ViTConfig

    preset, batch, workers = sizes.augment
    cfg = ViTConfig.from_preset(preset, num_classes=10)
    count = batch * 8
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (count,))
    per_image = TensorTransform(cfg.image_size, CIFAR_MEAN, CIFAR_STD, True, True)
    torch.manual_seed(0)
    model = VisionTransformer(cfg).to(sizes.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def fed_step(transform: TensorTransform | None) -> Callable[[], None]:
        loader = DataLoader(TensorImages(images, labels, transform), batch_size=batch, shuffle=True, drop_last=True,
                            num_workers=workers, persistent_workers=workers > 0, pin_memory=sizes.device == "cuda")
        on_device = BatchTransform(per_image) if transform is None else None
        batches: Iterator[Any] = iter(())

        def step() -> None:
            nonlocal batches
            try:
                x, y = next(batches)
            except StopIteration:
                batches = iter(loader)
                x, y = next(batches)
            x, y = x.to(sizes.device, non_blocking=True), y.to(sizes.device, non_blocking=True)
            train_on(model, optimizer, on_device(x) if on_device is not None else x, y, sizes)

        return step

    timed = interleaved({"in_loader": fed_step(per_image), "on_device": fed_step(None)}, sizes)
    row: dict[str, Any] = {"preset": preset, "batch": batch, "loader_workers": workers,
                           **{f"{name}_images_per_s": batch / result["s_per_step"] for name, result in timed.items()}}
    row["on_device_speedup"] = row["on_device_images_per_s"] / row["in_loader_images_per_s"]
    print(json.dumps(row), flush=True)
    return row


@contextlib.contextmanager
def gpu_utilisation() -> Iterator[dict[str, Any]]:
    """nvidia-smi's utilisation, sampled twice a second while the block runs (nothing without it)."""
    found: dict[str, Any] = {"samples": []}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                return
            first = out.stdout.strip().splitlines()[:1]
            if out.returncode == 0 and first:
                util, memory = (float(v) for v in first[0].split(","))
                found["samples"].append((util, memory))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        stop.set()
        thread.join()
        samples = found.pop("samples")
        found["gpu_util_mean"] = statistics.mean(s[0] for s in samples) if samples else None
        found["gpu_util_max"] = max(s[0] for s in samples) if samples else None
        found["gpu_memory_max_mib"] = max(s[1] for s in samples) if samples else None


def run_manifests(gpu: bool) -> list[dict[str, Any]]:
    """The 4-trial packed sweep and the 1-worker TrainingJob, as a user writes them."""
    model = {"preset": "vit-small", "imageSize": 64, "patchSize": 8} if gpu else {"preset": "vit-nano", "depth": 1}
    training = {"maxEpochs": 3 if gpu else 1, "batchSize": 128 if gpu else 64, "precision": "auto"}
    resources = {"workers": 1, "gpusPerWorker": 0.25, "cpusPerWorker": 2} if gpu else \
        {"workers": 1, "gpusPerWorker": 0, "cpusPerWorker": 0.5}
    sweep = {"apiVersion": "raylight.dev/v1alpha1", "kind": "TuneSweep", "metadata": {"name": "gpu-pack"},
             "spec": {"trial": {"model": model, "data": {"dataset": "digits"}, "training": training,
                                "resources": resources},
                      "searchSpace": {"training.learningRate": {"loguniform": [1e-4, 3e-3]}},
                      # On CPUs (the dry run) two trials show the same path at half the start-ups.
                      "numSamples": 4 if gpu else 2, "maxConcurrentTrials": 4 if gpu else 2,
                      "scheduler": {"fifo": {}},
                      "mlflow": {"experiment": "gpu-check"}}}
    job = {"apiVersion": "raylight.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "gpu-job"},
           "spec": {"model": model, "data": {"dataset": "digits"}, "training": training,
                    "resources": {**resources, "gpusPerWorker": 1 if gpu else 0},
                    "mlflow": {"experiment": "gpu-check"}}}
    return [sweep, job]


def run_part(sizes: Sizes) -> list[dict[str, Any]]:
    missing = [name for name in ("ray", "mlflow", "pydantic") if not _importable(name)]
    if missing:
        return [{"skipped": f"not importable here: {', '.join(missing)} (Ray's wheel is larger than what a "
                            "device call carries)"}]
    import yaml

    rows = []
    with tempfile.TemporaryDirectory(prefix="raylight-gpu-check-") as scratch:
        work = Path(scratch)
        for doc in run_manifests(sizes.device == "cuda"):
            manifest = work / f"{doc['metadata']['name']}.yaml"
            manifest.write_text(yaml.safe_dump(doc))
            command = [sys.executable, "-m", "raylight.cli", "run", str(manifest), "--output", "json",
                       "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}", "--storage-path", str(work / "results"),
                       "--num-cpus", str(min(os.cpu_count() or 2, 16))]
            env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
            started = time.monotonic()
            with gpu_utilisation() as gpu:
                done = _run_with_timeout(command, work, env)
            row: dict[str, Any] = {"kind": doc["kind"], "name": doc["metadata"]["name"], "exit_code": done.returncode,
                                   "wall_s": time.monotonic() - started, **gpu}
            summary = _json_summary(done.stdout)
            if done.returncode == 0 and summary is not None:
                row["trials"] = summary.get("trials")
            else:
                row["error"] = (done.stderr + done.stdout)[-2000:]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _run_with_timeout(command: list[str], work: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The run, or after 10 minutes a failed one whose output is what it printed until then: a hung
    run's last lines say where it hung (a bare TimeoutExpired only says that it did)."""
    try:
        return subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as expired:
        printed = [part.decode(errors="replace") if isinstance(part, bytes) else (part or "")
                   for part in (expired.stdout, expired.stderr)]
        return subprocess.CompletedProcess(command, 124, printed[0], printed[1] + "\n(killed after 600 s)")


def _json_summary(stdout: str) -> dict[str, Any] | None:
    """`raylight run -o json`'s summary: the JSON object on stdout (Ray may print a line after it)."""
    start = stdout.find("\n{") + 1 if not stdout.startswith("{") else 0
    try:
        summary, _ = json.JSONDecoder().raw_decode(stdout[start:])
    except ValueError:
        return None
    return summary if isinstance(summary, dict) else None


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vit = [r for r in report.get("vit", []) if "skipped" not in r]
    mlp = [r for r in report.get("mlp", []) if "skipped" not in r]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"{r['preset']}\n{'compiled' if r['compiled'] else 'eager'}" for r in vit]
    x = range(len(vit))
    left.bar([i - 0.2 for i in x], [r["raylight_images_per_s"] for r in vit], width=0.4, label="raylight ViT")
    left.bar([i + 0.2 for i in x], [r["timm_images_per_s"] for r in vit], width=0.4, label="timm ViT")
    for i, r in enumerate(vit):
        mfu = f"\nMFU {r['raylight_mfu']:.0%}" if r.get("raylight_mfu") else ""
        left.text(i, max(r["raylight_images_per_s"], r["timm_images_per_s"]), f"x{r['ratio_to_timm']:.2f}{mfu}",
                  ha="center", va="bottom", fontsize=8)
    left.set_xticks(list(x), labels, fontsize=8)
    left.set_ylabel("training images / s")
    left.set_title(f"ViT training step, {report['dtype']}, {report['device_name']}", fontsize=9)
    left.legend(fontsize=8)
    names = [n for n in ("unfused", "fused", "compiled") if mlp and f"{n}_ms" in mlp[0]]
    for j, name in enumerate(names):
        right.bar([i + (j - 1) * 0.27 for i in range(len(mlp))], [r[f"{name}_ms"] for r in mlp], width=0.27,
                  label=name)
    right.set_xticks(list(range(len(mlp))), [r["preset"] for r in mlp], fontsize=8)
    right.set_ylabel("ms per training step")
    right.set_title("ViT MLP: fused (Triton) vs unfused vs compiled", fontsize=9)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(report: dict[str, Any]) -> str:
    lines = [f"{report['device_name']} ({report['device']}), torch {report['torch']}, {report['wall_s']:.0f} s"]
    for r in report.get("vit", []):
        if "skipped" in r:
            lines.append(f"vit    {r['preset']:<10} {'compiled' if r['compiled'] else 'eager':<8} skipped")
            continue
        mfu = f"MFU {r['raylight_mfu']:.1%}" if r.get("raylight_mfu") else "MFU -"
        lines.append(f"vit    {r['preset']:<10} {'compiled' if r['compiled'] else 'eager':<8} "
                     f"{r['raylight_images_per_s']:>9.1f} img/s  x{r['ratio_to_timm']:.2f} timm  {mfu}")
    for r in report.get("mlp", []):
        if "skipped" not in r:
            vs = f", x{r['fused_vs_compiled']:.2f} vs compiled" if "fused_vs_compiled" in r else ""
            lines.append(f"mlp    {r['preset']:<10} fused x{r['fused_speedup']:.2f} vs unfused{vs}")
    effnet = report.get("effnet")
    if effnet:
        lines.append(f"effnet {effnet['preset']:<10} channels_last x{effnet['channels_last_speedup']:.2f}")
    optim = report.get("optim")
    if optim:
        lines.append(f"optim  {optim['preset']:<10} fused AdamW x{optim['fused_adamw_speedup']:.2f} vs foreach")
    augment = report.get("augment")
    if augment and "skipped" in augment:
        lines.append(f"augment skipped: {augment['skipped']}")
    elif augment:
        lines.append(f"augment {augment['preset']:<9} on the device x{augment['on_device_speedup']:.2f} "
                     f"vs in the loader ({augment['loader_workers']} workers)")
    for r in report.get("run", []):
        lines.append(f"run    {r.get('name', '-'):<10} " + (r["skipped"] if "skipped" in r else
                     f"exit {r['exit_code']}, {r['wall_s']:.0f} s, GPU util mean {r.get('gpu_util_mean')}"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="every part at toy sizes on the CPU (a dry run)")
    parser.add_argument("--parts", default="vit,mlp,effnet,optim,augment,run")
    parser.add_argument("--budget-s", type=float, default=420, help="later cases are skipped past this")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, if not in the table")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu")
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA device here: pass --cpu for the dry run")
    sizes = CPU if args.cpu else GPU
    from raylight_trainer.training.module import compile_problem

    cannot_compile = compile_problem(on_gpu=sizes.device == "cuda")
    if cannot_compile:  # the eager parts still run; the report says why the compiled ones did not
        print(f"torch.compile cannot run here ({cannot_compile}): eager only", flush=True)
        sizes = dataclasses.replace(sizes, compile=False)
    parts = set(args.parts.split(","))
    started = time.monotonic()
    deadline = started + args.budget_s
    name, peak = device_peak(sizes, args.peak_tflops)
    report: dict[str, Any] = {"device": sizes.device, "device_name": name, "peak_flops": peak,
                              "compile_problem": cannot_compile,
                              "dtype": str(sizes.dtype).removeprefix("torch."), "torch": torch.__version__,
                              "threads": torch.get_num_threads()}
    if "vit" in parts:
        report["vit"] = vit_part(sizes, peak, deadline)
    if "mlp" in parts:
        report["mlp"] = mlp_part(sizes, deadline)
    if "effnet" in parts:
        report["effnet"] = effnet_part(sizes)
    if "optim" in parts:
        report["optim"] = optim_part(sizes)
    if "augment" in parts:
        report["augment"] = augment_part(sizes)
    if "run" in parts:
        report["run"] = run_part(sizes)
    report["wall_s"] = time.monotonic() - started
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"check_{sizes.device}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    plot(report, args.out / f"{stem}.png")
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
