"""bench/gpu/run, the one-call GPU check, in its --cpu dry mode: every part at toy sizes, so that
the script is known to work before a GPU machine is at hand (tests/e2e runs its `run` part)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from raylight.api import parse_resource

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench" / "gpu"))
import check  # noqa: E402  (bench/gpu/check.py, not a package)


def test_the_dry_run_times_every_model_part_and_writes_its_report(tmp_path: Path) -> None:
    done = subprocess.run([str(REPO / "bench" / "gpu" / "run"), "--cpu", "--parts", "vit,mlp,effnet,optim,augment",
                           "--out", str(tmp_path)], env={**os.environ, "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "check_cpu.json").read_text())
    assert (tmp_path / "check_cpu.png").stat().st_size > 10_000
    vit = report["vit"]
    assert [row["compiled"] for row in vit] == ([False] if report["compile_problem"] else [False, True])
    for row in vit:  # both models timed, FLOPs counted by PyTorch, no MFU without a device peak
        assert row["raylight_images_per_s"] > 0 and row["timm_images_per_s"] > 0
        assert row["flops_per_step"] > 0 and row["raylight_mfu"] is None
    assert {"unfused_ms", "fused_ms"} <= set(report["mlp"][0])
    assert ("compiled_ms" in report["mlp"][0]) is not bool(report["compile_problem"])
    assert report["effnet"]["channels_last_speedup"] > 0
    assert report["optim"]["fused_adamw_speedup"] > 0
    augment = report["augment"]
    assert augment["in_loader_images_per_s"] > 0 and augment["on_device_images_per_s"] > 0
    assert "on the device x" in done.stdout
    assert "vit    vit-tiny" in done.stdout and "effnet" in done.stdout


def test_flops_per_step_match_the_models_arithmetic() -> None:
    # PyTorch's counter against our own count of a ViT's matmuls and attention (3x forward).
    import torch

    from raylight_trainer.model import VisionTransformer, ViTConfig, training_flops_per_image

    cfg = ViTConfig.from_preset("vit-tiny", num_classes=10, image_size=32, depth=2)
    model = VisionTransformer(cfg)
    images, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    counted = check.step_flops(check.train_step(model, images, labels, check.CPU))
    assert counted == pytest.approx(2 * training_flops_per_image(cfg), rel=0.1)


def test_the_end_to_end_manifests_are_valid_for_the_gpu_and_the_cpu() -> None:
    for gpu in (True, False):
        for doc in check.run_manifests(gpu):
            resource = parse_resource(doc)
            assert resource.metadata.name in ("gpu-pack", "gpu-job")
    sweep = check.run_manifests(True)[0]
    assert sweep["spec"]["trial"]["resources"]["gpusPerWorker"] == 0.25 and sweep["spec"]["numSamples"] == 4


def test_without_a_gpu_the_check_asks_for_the_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(SystemExit):
        check.main([])
    assert "--cpu" in capsys.readouterr().err


def test_the_run_summary_is_read_from_stdout_even_with_a_line_after_it() -> None:
    assert check._json_summary('{"trials": {"total": 4}}\n') == {"trials": {"total": 4}}
    assert check._json_summary('(raylet) a warning\n{"trials": 1}\n(raylet) another\n') == {"trials": 1}
    assert check._json_summary("Traceback: no summary") is None
