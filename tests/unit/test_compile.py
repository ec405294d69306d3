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
from raylight_trainer import module as module_file
from raylight_trainer.model import ViTConfig
from raylight_trainer.module import ImageClassifier

TRAINING = {"optimizer": "adamw", "learning_rate": 1e-3, "weight_decay": 0.05, "momentum": 0.9,
            "warmup_epochs": 0.0, "label_smoothing": 0.0}


def fit(compile_model: bool) -> ImageClassifier:
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=16, patch_size=4, dim=32, depth=1, heads=2, num_classes=4)
    model = ImageClassifier(model=cfg.as_dict(), training={**TRAINING, "compile": compile_model})
    generator = torch.Generator().manual_seed(1)
    images, labels = torch.randn(32, 3, 16, 16, generator=generator), torch.randint(0, 4, (32,), generator=generator)
    data = TensorDataset(images, labels)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, DataLoader(data, batch_size=8), DataLoader(data, batch_size=16))
    return model


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
