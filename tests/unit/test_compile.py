"""training.compile: the model trains compiled (torch.compile's Inductor, on this CPU) to the same
weights as uncompiled, its checkpoints keep the plain network's keys, and where it cannot run the
worker says why and trains without it."""

from __future__ import annotations

from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from raylight.api import TrainingJob, parse_resource
from raylight_trainer.model import ViTConfig
from raylight_trainer.training import module as module_file
from raylight_trainer.training.module import ImageClassifier

TRAINING = {"optimizer": "adamw", "learning_rate": 1e-3, "weight_decay": 0.05, "momentum": 0.9,
            "warmup_epochs": 0.0, "label_smoothing": 0.0}


def train_two_epochs(model: ImageClassifier, size: int) -> ImageClassifier:
    """Two epochs on the CPU of 32 random images of 4 classes (the same ones every call)."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(32, 3, size, size, generator=generator)
    data = TensorDataset(images, torch.randint(0, 4, (32,), generator=generator))
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, DataLoader(data, batch_size=8), DataLoader(data, batch_size=16))
    return model


def fit(compile_model: bool) -> ImageClassifier:
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=16, patch_size=4, dim=32, depth=1, heads=2, num_classes=4)
    return train_two_epochs(ImageClassifier(model=cfg.as_dict(), training={**TRAINING, "compile": compile_model}), 16)


def test_a_compiled_model_trains_to_the_same_weights_and_keeps_its_state_dict_keys() -> None:
    if module_file.compile_problem(on_gpu=False):
        pytest.skip(f"torch.compile cannot run here: {module_file.compile_problem(on_gpu=False)}")
    plain, compiled = fit(False), fit(True)
    assert compiled.net._compiled_call_impl is not None and plain.net._compiled_call_impl is None
    assert list(compiled.state_dict()) == list(plain.state_dict())  # no _orig_mod. prefix in checkpoints
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(compiled.state_dict()[name], value, rtol=1e-4, atol=1e-4, msg=name)


def test_where_compile_cannot_run_the_worker_says_why_and_trains_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module_file.shutil, "which", lambda name: None)
    assert "no C++ compiler" in (module_file.compile_problem(on_gpu=False) or "")
    with pytest.warns(UserWarning, match="training.compile: no C\\+\\+ compiler"):
        model = fit(True)
    assert model.net._compiled_call_impl is None


def test_compile_is_off_unless_asked_and_named_in_the_spec() -> None:
    doc: dict[str, Any] = {"apiVersion": "raylight.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "c"},
                           "spec": {"training": {"compile": True}}}
    job = parse_resource(doc)
    assert isinstance(job, TrainingJob) and job.spec.training.compile is True
    doc["spec"]["training"] = {}
    assert parse_resource(doc).spec.training.compile is False  # type: ignore[union-attr]


def test_adamw_is_fused_and_updates_the_weights_as_the_unfused_one_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """The module's AdamW runs fused (one kernel over all parameters); trained with a plain
    AdamW instead, the weights come out the same."""
    fused = fit(compile_model=False)
    (optimizer,) = fused.trainer.optimizers
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"] is True

    plain_adamw = torch.optim.AdamW

    def unfused(*args: Any, **kwargs: Any) -> torch.optim.AdamW:
        kwargs.pop("fused", None)
        return plain_adamw(*args, **kwargs)

    monkeypatch.setattr(module_file.torch.optim, "AdamW", unfused)
    plain = fit(compile_model=False)
    assert plain.trainer.optimizers[0].defaults["fused"] is None
    for (name, a), (_, b) in zip(fused.net.state_dict().items(), plain.net.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), name


def fit_efficientnet(channels_last: bool | None) -> ImageClassifier:
    from raylight_trainer.model import EfficientNetConfig

    torch.manual_seed(0)
    cfg = EfficientNetConfig(image_size=32, num_classes=4, width_multiplier=0.25, depth_multiplier=0.25)
    return train_two_epochs(ImageClassifier(model=cfg.as_dict(), training={**TRAINING, "channels_last": channels_last},
                                            architecture="efficientnet"), 32)


def test_channels_last_computes_what_contiguous_does_and_is_efficientnets_cpu_layout() -> None:
    from raylight_trainer.model import EfficientNet, EfficientNetConfig

    torch.manual_seed(0)
    contiguous = EfficientNet(EfficientNetConfig(image_size=32, num_classes=4, width_multiplier=0.25,
                                                 depth_multiplier=0.25))
    last = EfficientNet(contiguous.cfg)  # type: ignore[arg-type]
    last.load_state_dict(contiguous.state_dict())
    last.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,))
    for net, batch in ((contiguous, images), (last, images.contiguous(memory_format=torch.channels_last))):
        torch.nn.functional.cross_entropy(net(batch), labels).backward()
    # The same step in another memory layout: gradients equal up to float32 summation order.
    # (A bias's gradient sums many terms that cancel: its error is relative to the largest ones.)
    scale = max(float(p.grad.abs().max()) for p in contiguous.parameters() if p.grad is not None)
    for (name, a), b in zip(contiguous.named_parameters(), last.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-5 * scale, msg=name)

    trained = fit_efficientnet(None)  # the default on a CPU: channels_last, weights and batches
    conv = next(p for p in trained.net.parameters() if p.dim() == 4 and p.shape[1] > 1)
    assert trained.channels_last and conv.is_contiguous(memory_format=torch.channels_last)
    assert not fit_efficientnet(False).channels_last
    fresh = EfficientNet(trained.net.cfg)  # type: ignore[arg-type]
    fresh.load_state_dict(trained.net.state_dict())  # its checkpoints load into the usual layout
    torch.testing.assert_close(fresh.eval()(images), trained.net.eval()(images), rtol=1e-3, atol=1e-4)


def test_channels_last_defaults_where_it_was_measured_to_win() -> None:
    from raylight_trainer.training.module import uses_channels_last

    assert uses_channels_last("efficientnet", {}, on_gpu=False)
    assert not uses_channels_last("efficientnet", {}, on_gpu=True)  # not measured on a GPU yet
    assert not uses_channels_last("vit", {}, on_gpu=False)
    assert uses_channels_last("vit", {"channels_last": True}, on_gpu=True)
    assert not uses_channels_last("efficientnet", {"channels_last": False}, on_gpu=False)
