"""spec.model.pretrained: timm's checkpoints (made here with timm's random init, saved in the real
formats) load into our networks with timm's logits; what differs is adapted as timm adapts it; every
bad input fails with one line naming the field; the object store and MLflow serve weights too."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from raylight.api import ModelSpec
from raylight.api.pods import DATA_CACHE_ENV
from raylight_trainer.model import EfficientNetConfig, ViTConfig, create_model
from raylight_trainer.model.pretrained import (
    Checkpoint,
    check_pretrained,
    check_timm_name,
    load_into,
    read_checkpoint,
    read_path,
    start_normalization,
)
from raylight_trainer.runtime.errors import PretrainedError

# Our presets that are timm's architectures, by timm's name.
SAME_AS_TIMM = {"vit-tiny": "vit_tiny_patch16_224", "vit-small": "vit_small_patch16_224",
                "efficientnet-b0": "efficientnet_b0"}


def ours(preset: str, **overrides: int) -> torch.nn.Module:
    if preset.startswith("efficientnet"):
        return create_model("efficientnet", EfficientNetConfig.from_preset(preset, **overrides).as_dict()).eval()
    return create_model("vit", ViTConfig.from_preset(preset, **overrides).as_dict()).eval()


def timm_checkpoint(name: str, directory: Path, fmt: str, **kwargs: int) -> tuple[torch.nn.Module, Path]:
    """timm's network with random weights, saved as a user would download it."""
    torch.manual_seed(1)
    network = timm.create_model(name, pretrained=False, **kwargs).eval()
    path = directory / f"{name}.{fmt}"
    if fmt == "safetensors":
        save_file(network.state_dict(), str(path))
    else:
        torch.save(network.state_dict(), path)
    return network, path


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
@pytest.mark.parametrize("preset", ["vit-tiny", "vit-small", "efficientnet-b0"])
def test_our_networks_load_timms_checkpoints_and_give_its_logits(tmp_path: Path, preset: str, fmt: str) -> None:
    reference, path = timm_checkpoint(SAME_AS_TIMM[preset], tmp_path, fmt)
    network = ours(preset, num_classes=1000)
    said = load_into(network, read_path(path, path.name))
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(network(images), reference(images), atol=1e-5, rtol=0)
    assert said == f"started from {path.name}: {len(network.state_dict())} tensors, every tensor as it was"


def test_a_classifier_of_another_class_count_is_reinitialised_and_every_other_tensor_loaded(
        tmp_path: Path) -> None:
    reference, path = timm_checkpoint("vit_tiny_patch16_224", tmp_path, "safetensors")
    network = ours("vit-tiny", num_classes=10)
    torch.manual_seed(7)
    fresh_head = ours("vit-tiny", num_classes=10).head.weight.detach().clone()
    network.head.weight.data.copy_(fresh_head)
    said = load_into(network, read_path(path, "w"))
    source = reference.state_dict()
    for key, tensor in network.state_dict().items():
        if key.startswith("head."):
            assert tensor.shape[0] == 10
        else:
            assert torch.equal(tensor, source[key]), key
    assert torch.equal(network.head.weight, fresh_head)  # kept its own init, not the checkpoint's
    assert "classifier re-initialised for 10 classes (the checkpoint's has 1000)" in said


def test_position_embeddings_resampled_to_160_px_equal_timms_own_resampling(tmp_path: Path) -> None:
    _, path = timm_checkpoint("vit_tiny_patch16_224", tmp_path, "safetensors")
    network = ours("vit-tiny", num_classes=1000, image_size=160)
    said = load_into(network, read_path(path, "w"))
    # timm's own path: the same file, loaded by timm into its network made for 160 px.
    theirs = timm.create_model("vit_tiny_patch16_224", pretrained=True, img_size=160,
                               pretrained_cfg_overlay={"file": str(path), "custom_load": False}).eval()
    torch.testing.assert_close(network.pos_embed, theirs.pos_embed, atol=0, rtol=0)
    images = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(network(images), theirs(images), atol=1e-5, rtol=0)
    assert "position embeddings resampled from (1, 197, 192) to (1, 101, 192)" in said


def test_grayscale_images_get_an_adapted_first_convolution(tmp_path: Path) -> None:
    reference, path = timm_checkpoint("efficientnet_b0", tmp_path, "pth")
    network = ours("efficientnet-b0", num_classes=1000, in_chans=1)
    said = load_into(network, read_path(path, "w"))
    # timm's adapt_input_conv: one channel is the sum of the three (a gray image is all three alike).
    torch.testing.assert_close(network.conv_stem.weight, reference.conv_stem.weight.sum(1, keepdim=True))
    gray = torch.rand(2, 1, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(network(gray), reference(gray.expand(-1, 3, -1, -1)), atol=1e-4, rtol=0)
    assert "input convolution adapted from 3 to 1 channel(s)" in said


def test_a_checkpoint_of_another_size_names_the_first_key_and_both_shapes(tmp_path: Path) -> None:
    _, path = timm_checkpoint("vit_tiny_patch16_224", tmp_path, "safetensors")
    with pytest.raises(PretrainedError) as caught:
        load_into(ours("vit-small", num_classes=1000), read_path(path, "s3://b/tiny.safetensors"))
    assert str(caught.value) == (
        "spec.model.pretrained s3://b/tiny.safetensors: cls_token is (1, 1, 192) in the checkpoint but "
        "(1, 1, 384) in the model: give weights of this architecture and size, or set spec.model to the "
        "checkpoint's")


def test_a_checkpoint_missing_a_block_names_it(tmp_path: Path) -> None:
    source = ours("vit-nano").state_dict()
    save_file({k: v for k, v in source.items() if not k.startswith("blocks.3.")}, str(tmp_path / "w.safetensors"))
    with pytest.raises(PretrainedError, match=r"the checkpoint has no blocks\.3\.norm1\.weight \(12 of the model's"):
        load_into(ours("vit-nano"), read_path(tmp_path / "w.safetensors", "w"))


def test_raylights_lightning_checkpoint_loads_without_its_module_prefix(tmp_path: Path) -> None:
    network = ours("vit-nano")
    torch.save({"state_dict": {f"net.{k}": v for k, v in network.state_dict().items()},
                "hyper_parameters": {"architecture": "vit", "model": {"dim": 64}}}, tmp_path / "run.ckpt")
    loaded = read_path(tmp_path / "run.ckpt", "run.ckpt")
    assert loaded.card == {"architecture": "vit", "config": {"dim": 64}}
    target = ours("vit-nano")
    load_into(target, loaded)
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), network.state_dict().values(),
                                                 strict=True))


@pytest.mark.parametrize(("content", "message"), [
    (b"not a checkpoint at all", "is not a torch or safetensors file"),
    ("list", "not a state dict (a mapping of parameter names to tensors)"),
])
def test_a_file_that_is_no_state_dict_says_so(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "weights.pth"
    if content == "list":
        torch.save([torch.zeros(1)], path)
    else:
        path.write_bytes(content)  # type: ignore[arg-type]
    with pytest.raises(PretrainedError, match=rf"^spec\.model\.pretrained weights\.pth: .*{re.escape(message)}"):
        read_checkpoint("weights.pth", data_dir=str(tmp_path))


def test_a_missing_file_names_the_field_and_the_data_directory(tmp_path: Path) -> None:
    with pytest.raises(PretrainedError, match=r"^spec\.model\.pretrained gone\.safetensors: no such file \(relative "
                       r"paths are read under the data directory"):
        check_pretrained("gone.safetensors", str(tmp_path), None)


def test_an_unreachable_hub_fails_within_seconds_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    started = time.monotonic()
    with pytest.raises(PretrainedError) as caught:
        read_checkpoint("timm:vit_small_patch16_224.augreg_in21k")
    assert time.monotonic() - started < 5
    text = str(caught.value)
    assert text.startswith("spec.model.pretrained timm:vit_small_patch16_224.augreg_in21k: the hub at 127.0.0.1:9 "
                           "is not reachable from here")
    assert "Give the weights as a file or an s3:// URI instead" in text


def test_an_unknown_timm_name_suggests_the_close_ones() -> None:
    with pytest.raises(PretrainedError, match=r"^spec\.model\.name 'resnet_18' is not a model timm knows: did you "
                       r"mean .*resnet18"):
        check_timm_name("resnet_18")
    check_timm_name("convnext_atto")


def test_normalisation_follows_the_checkpoint_where_it_says() -> None:
    card = {"input": {"mean": [0.5], "std": [0.25]}}
    assert Checkpoint("x", {}, card=card).normalization() == ((0.5,), (0.25,))
    assert start_normalization(ModelSpec(), Checkpoint("x", {})) is None  # unknown: the dataset's
    timm_spec = ModelSpec(architecture="timm", name="resnet18")
    assert start_normalization(timm_spec, Checkpoint("x", {})) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_weights_on_the_object_store_are_fetched_once_per_cache(
        tmp_path: Path, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.test_dataset_cache import upload

    monkeypatch.setenv(DATA_CACHE_ENV, str(tmp_path / "cache"))
    (tmp_path / "up").mkdir()
    reference, path = timm_checkpoint("resnet18", tmp_path / "up", "safetensors")
    upload(path, f"{s3_bucket}/weights/resnet18.safetensors")
    uri = f"{s3_bucket}/weights/resnet18.safetensors"
    check_pretrained(uri, None, None)
    first = read_checkpoint(uri)
    mtime = next((tmp_path / "cache").rglob("resnet18.safetensors")).stat().st_mtime_ns
    second = read_checkpoint(uri)
    assert next((tmp_path / "cache").rglob("resnet18.safetensors")).stat().st_mtime_ns == mtime  # not fetched again
    assert first.state_dict.keys() == second.state_dict.keys() == reference.state_dict().keys()
    with pytest.raises(PretrainedError, match=rf"^spec\.model\.pretrained {s3_bucket}/weights/nope\.pth: no object "
                       r"there"):
        check_pretrained(f"{s3_bucket}/weights/nope.pth", None, None)


def test_a_logged_model_carries_its_weights_and_card_and_a_run_starts_from_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from raylight_trainer.tracking.mlflow_runs import log_model
    from raylight_trainer.training.workers import model_card

    monkeypatch.setenv(DATA_CACHE_ENV, str(tmp_path / "cache"))
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("pretrained", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    network = ours("vit-nano", num_classes=10, in_chans=1)
    setattr(network, "normalization", [[0.3], [0.38]])  # noqa: B010
    mlflow.set_tracking_uri(uri)
    logged = log_model(uri, run_id, network, (1, 16, 16), "digits-vit", model_card(network, "digits"))
    assert logged == "models:/digits-vit/1"
    # A Ray worker's own MLflow default is another store (sqlite in its directory): the given URI
    # must serve the registry too, not only the runs.
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    with pytest.raises(PretrainedError, match=r"^spec\.model\.pretrained models:/digits-vit/2: MLflow at .* says: "):
        check_pretrained("models:/digits-vit/2", None, uri)
    for source in ("models:/digits-vit/1", "models:/digits-vit/latest", f"runs:/{run_id}/model"):
        check_pretrained(source, None, uri)
        checkpoint = read_checkpoint(source, tracking_uri=uri)
        assert checkpoint.normalization() == ((0.3,), (0.38,))
        target = ours("vit-nano", num_classes=10, in_chans=1)
        assert load_into(target, checkpoint).endswith("every tensor as it was")
        for key, tensor in network.state_dict().items():
            assert torch.equal(target.state_dict()[key], tensor), key


def _named_groups(network: torch.nn.Module, groups: list[dict]) -> list[tuple[tuple[str, ...], float, float]]:
    names = {id(param): name for name, param in network.named_parameters()}
    return sorted((tuple(sorted(names[id(p)] for p in group["params"])), group["lr_scale"], group["weight_decay"])
                  for group in groups)


def test_layer_decay_groups_of_our_vit_small_equal_timms() -> None:
    from timm.optim import param_groups_layer_decay

    from raylight_trainer.training.module import parameter_groups, split_classifier

    network = ours("vit-small", num_classes=1000)
    reference = timm.create_model("vit_small_patch16_224", pretrained=False)
    theirs = param_groups_layer_decay(reference, weight_decay=0.05, layer_decay=0.75,
                                      no_weight_decay_list=sorted(reference.no_weight_decay()))
    mine = parameter_groups(network, 0.05, 0.75)
    assert _named_groups(network, mine) == _named_groups(reference, theirs)
    scales = sorted({group["lr_scale"] for group in mine})
    assert len(scales) == 14 and scales[-1] == 1.0 and scales[0] == pytest.approx(0.75 ** 13)
    # freezeEpochs' split keeps every group's settings and puts the classifier apart.
    split = split_classifier(network, mine)
    assert sum(len(g["params"]) for g in split) == sum(len(g["params"]) for g in mine)
    head = [g for g in split if g["classifier"]]
    assert {id(p) for g in head for p in g["params"]} == {id(network.head.weight), id(network.head.bias)}
    assert all(g["lr_scale"] == 1.0 for g in head)


def test_while_frozen_only_the_classifier_has_a_rate_then_the_rest_warms_up() -> None:
    from raylight_trainer.training.module import group_factor, warmup_cosine

    body, head = group_factor({"classifier": False}, 2, 20, 5), group_factor({"classifier": True}, 2, 20, 5)
    assert [body(step) for step in range(5)] == [0.0] * 5
    assert body(5) == warmup_cosine(0, 2, 15) == 0.5 and body(6) == 1.0
    assert [head(step) for step in range(20)] == [warmup_cosine(step, 2, 20) for step in range(20)]
    unfrozen = group_factor({"classifier": False}, 2, 20, 0)
    assert [unfrozen(step) for step in range(20)] == [warmup_cosine(step, 2, 20) for step in range(20)]


def test_the_driver_checks_every_weights_and_name_a_sweep_may_use(tmp_path: Path) -> None:
    from raylight.api import parse_resource
    from raylight_trainer.driver import RunOptions, check_model_sources, model_sources

    doc = {"apiVersion": "raylight.dev/v1alpha1", "kind": "TuneSweep", "metadata": {"name": "s"}, "spec": {
        "numSamples": 2, "trial": {"model": {"architecture": "timm", "name": "resnet18", "imageSize": 32}},
        "searchSpace": {"model.pretrained": {"choice": ["a.safetensors", "b.safetensors"]},
                        "model.name": {"choice": ["resnet18", "resnet_34"]}}}}
    resource = parse_resource(doc)
    assert model_sources(resource) == ({"a.safetensors", "b.safetensors"}, {"resnet18", "resnet_34"})
    with pytest.raises(PretrainedError, match=r"^spec\.searchSpace\.model\.name 'resnet_34' is not a model timm "
                       r"knows: did you mean resnet34"):
        check_model_sources(resource, RunOptions(data_dir=str(tmp_path)))
    doc["spec"]["searchSpace"].pop("model.name")
    with pytest.raises(PretrainedError, match=r"^spec\.searchSpace\.model\.pretrained a\.safetensors: no such file"):
        check_model_sources(parse_resource(doc), RunOptions(data_dir=str(tmp_path)))
    doc["spec"]["trial"]["model"]["pretrained"] = "c.safetensors"
    doc["spec"]["searchSpace"].pop("model.pretrained")
    with pytest.raises(PretrainedError, match=r"^spec\.trial\.model\.pretrained c\.safetensors: no such file"):
        check_model_sources(parse_resource(doc), RunOptions(data_dir=str(tmp_path)))
