"""What object storage costs a run per epoch: saving and restoring one checkpoint on a directory vs on
a real S3-compatible store (versitygw, built by tests/objectstore/build, on 127.0.0.1).

Each epoch a run writes its checkpoint (weights and AdamW's two moments) to a local temporary
directory and Ray copies it to the run's storage with pyarrow's filesystems; a resumed or retried
run, and the best model logged at the end, read it back through `ray.train.Checkpoint`. This bench
does the same steps with the same calls: save = torch.save + pyarrow.fs.copy_files to the storage;
restore = Checkpoint(path, filesystem).as_directory() + torch.load. The two stores are interleaved
(directory, store, directory, store, ...) so that machine noise hits both alike, and both write
to the same disk: the difference is the S3 protocol and the gateway, not a network. A store across a
network adds its bandwidth's time on top (a ViT-S checkpoint is ~260 MB).

    python bench/checkpoint_storage.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raylight.api import ModelSpec  # noqa: E402
from raylight_trainer.model import config_from_spec, create_model  # noqa: E402
from raylight_trainer.runtime.storage import Storage  # noqa: E402
from tests.conftest import ObjectStore  # noqa: E402

# The quickstart's largest trial (depth 6 of its search space) on 8x8 digits, and ViT-S/16.
MODELS = (("quickstart ViT (vit-nano, depth 6)", {"preset": "vit-nano", "imageSize": 16, "patchSize": 4, "depth": 6},
           10, 1),
          ("ViT-S/16", {"preset": "vit-small"}, 1000, 3))


def checkpoint_of(spec: dict[str, Any], classes: int, chans: int) -> tuple[dict[str, Any], int]:
    """A checkpoint's contents after one AdamW step (the moments exist), and the parameter count."""
    model_spec = ModelSpec.model_validate(spec)
    cfg = config_from_spec(model_spec, classes, chans)
    torch.manual_seed(0)
    net = create_model("vit", cfg.as_dict())
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    size = cfg.image_size
    F.cross_entropy(net(torch.randn(2, chans, size, size)), torch.tensor([0, 1])).backward()
    optimizer.step()
    params = sum(p.numel() for p in net.parameters())
    return {"state_dict": net.state_dict(), "optimizer_states": [optimizer.state_dict()], "epoch": 1}, params


def save(contents: dict[str, Any], storage: Storage, name: str) -> float:
    from pyarrow.fs import LocalFileSystem, copy_files

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        torch.save(contents, Path(scratch) / "checkpoint.ckpt")
        target = storage / name
        storage.filesystem.create_dir(target.path, recursive=True)  # as Ray does before it copies
        copy_files(scratch, target.path, source_filesystem=LocalFileSystem(),
                   destination_filesystem=storage.filesystem)
    return time.perf_counter() - started


def restore(storage: Storage, name: str) -> float:
    from ray.train import Checkpoint

    started = time.perf_counter()
    place = storage / name
    checkpoint = Checkpoint(path=place.path, filesystem=place.ray_filesystem)
    with checkpoint.as_directory() as directory:
        torch.load(Path(directory) / "checkpoint.ckpt", map_location="cpu", weights_only=False)
    return time.perf_counter() - started


def measure(label: str, spec: dict[str, Any], classes: int, chans: int, stores: dict[str, Storage],
            rounds: int) -> dict[str, Any]:
    contents, params = checkpoint_of(spec, classes, chans)
    times: dict[str, dict[str, list[float]]] = {name: {"save": [], "restore": []} for name in stores}
    for index in range(rounds + 1):
        for name, storage in stores.items():
            saved, restored = save(contents, storage, f"ckpt-{index}"), restore(storage, f"ckpt-{index}")
            if index:  # the first round warms both up (imports, the S3 client's connections)
                times[name]["save"].append(saved)
                times[name]["restore"].append(restored)
    with tempfile.TemporaryDirectory() as scratch:
        torch.save(contents, Path(scratch) / "c.ckpt")
        megabytes = (Path(scratch) / "c.ckpt").stat().st_size / 1e6
    median = {name: {op: statistics.median(values) for op, values in ops.items()} for name, ops in times.items()}
    return {
        "model": label, "parameters": params, "checkpoint_mb": round(megabytes, 1),
        "median_s": {name: {op: round(v, 4) for op, v in ops.items()} for name, ops in median.items()},
        "store_vs_directory": {op: round(median["object store"][op] / median["directory"][op], 2)
                               for op in ("save", "restore")},
        "seconds": {name: {op: [round(v, 4) for v in values] for op, values in ops.items()}
                    for name, ops in times.items()},
    }


def plot(cases: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(cases), figsize=(4 * len(cases), 3.5))
    for ax, case in zip(axes, cases, strict=True):
        ops = ("save", "restore")
        for offset, name in ((-0.2, "directory"), (0.2, "object store")):
            values = [case["median_s"][name][op] for op in ops]
            ax.bar([i + offset for i in range(2)], values, 0.4, label=name)
        for i, op in enumerate(ops):
            ax.text(i + 0.2, case["median_s"]["object store"][op], f"x{case['store_vs_directory'][op]:.2f}",
                    ha="center", va="bottom", fontsize=8)
        ax.set_xticks([0, 1], ["save (per epoch)", "restore"])
        ax.set_ylabel("seconds (median)")
        ax.set_title(f"{case['model']}\n{case['checkpoint_mb']} MB checkpoint", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="raylight-ckpt-bench-"))
    server = ObjectStore(work / "store")
    (work / "store").mkdir()
    server.start()
    try:
        os.environ.update(server.env())
        bucket = server.make_bucket()
        stores = {"directory": Storage.at(work / "directory"), "object store": Storage.at(f"s3://{bucket}/runs")}
        cases = [measure(label, spec, classes, chans, stores, args.rounds) for label, spec, classes, chans in MODELS]
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    report = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                          "torch": torch.__version__},
              "object_store": "versitygw (posix gateway) on 127.0.0.1, same disk as the directory",
              "rounds": args.rounds, "cases": cases}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "checkpoint_storage.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(cases, args.out / "checkpoint_storage.png")
    for case in cases:
        d, s = case["median_s"]["directory"], case["median_s"]["object store"]
        print(f"{case['model']:<36} {case['checkpoint_mb']:>7.1f} MB  save {d['save']:.3f} -> {s['save']:.3f} s "
              f"(x{case['store_vs_directory']['save']:.2f})  restore {d['restore']:.3f} -> {s['restore']:.3f} s "
              f"(x{case['store_vs_directory']['restore']:.2f})")


if __name__ == "__main__":
    main()
