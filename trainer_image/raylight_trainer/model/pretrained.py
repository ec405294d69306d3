"""Weights to start from (spec.model.pretrained): where they are, how they are read, how they load.

timm does the adapting (`timm.models.load_pretrained`): it drops a classifier of another class
count, adapts the first convolution to other input channels and, with its ViT checkpoint filter,
resamples position and patch embeddings. Our own networks expose what it reads (`pretrained_cfg`,
`patch_embed.grid_size`, `num_prefix_tokens`), so the same call serves them and timm's models.
What is ours: finding the file (a path, the object store, MLflow, the hub), reading the formats
(safetensors, torch state dicts, Raylight's checkpoints and logged models), checking every other
tensor before loading (an error names the first key that does not fit, and both shapes) and
saying what was adapted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from raylight.api import ModelSpec
from raylight.api.cluster import is_object_store
from raylight.api.tags import MODEL_CARD_FILE as CARD_FILE
from raylight.api.tags import MODEL_WEIGHTS_FILE as WEIGHTS_FILE

from ..runtime.errors import PretrainedError

FIELD = "spec.model.pretrained"
HUB_ENDPOINT = "https://huggingface.co"
HUB_CONNECT_SECONDS = 3.0


@dataclass
class Checkpoint:
    """Weights read from where the spec says, with what is known of how they were trained."""

    location: str
    state_dict: dict[str, torch.Tensor]
    card: dict[str, Any] = field(default_factory=dict)  # a Raylight model's card (normalisation, classes)
    hub_cfg: dict[str, Any] = field(default_factory=dict)  # timm's description of hub weights

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """The (mean, std) the weights were trained with, where the checkpoint says."""
        source = self.card.get("input") or self.hub_cfg
        if source.get("mean") and source.get("std"):
            return tuple(source["mean"]), tuple(source["std"])
        return None


def start_normalization(spec: ModelSpec, checkpoint: Checkpoint | None) -> tuple[
        tuple[float, ...], tuple[float, ...]] | None:
    """How images must be normalised for weights to start from: as the checkpoint says, else, for a
    timm model, as timm's weights of that name were; None (the dataset's) where nothing says."""
    if checkpoint is None:
        return None
    known = checkpoint.normalization()
    if known is None and spec.architecture == "timm":
        from .timm_models import default_pretrained_cfg

        cfg = default_pretrained_cfg(spec.timm_name())
        known = (tuple(cfg["mean"]), tuple(cfg["std"])) if cfg.get("mean") and cfg.get("std") else None
    return known


def _fail(location: str, problem: str) -> PretrainedError:
    return PretrainedError(f"{FIELD} {location}: {problem}")


# -- where the weights are -------------------------------------------------------------------------

def local_path(value: str, data_dir: str | None, tracking_uri: str | None) -> Path:
    """A local copy of the weights named by `value` (not a hub name): a path, or the object store's
    or MLflow's object fetched once into the data cache."""
    from ..data.cache import cached_file
    from ..data.datasets import dataset_location

    if value.startswith(("models:/", "runs:/")):
        return _mlflow_copy(value, tracking_uri)
    location = dataset_location(value, data_dir)
    if is_object_store(location):
        return cached_file(location, FIELD)
    path = Path(location)
    if not path.exists():
        hint = f" (relative paths are read under the data directory {data_dir})" if data_dir else ""
        raise _fail(value, f"no such file{hint}; give the weights' path, or an s3:// URI")
    return path


def _mlflow_copy(uri: str, tracking_uri: str | None) -> Path:
    """A model or run artifact from MLflow, downloaded once per node (keyed by the version a
    models:/NAME/latest or @alias pointed to when fetched)."""
    import mlflow.artifacts

    from ..data.cache import cache_dir, locked

    with _mlflow_errors(uri, tracking_uri):
        pinned = _pinned_model_uri(uri, tracking_uri)
        target = cache_dir() / ("mlflow-" + hashlib.sha256(f"{tracking_uri}|{pinned}".encode()).hexdigest()[:16])
        cache_dir().mkdir(parents=True, exist_ok=True)
        with locked(cache_dir() / ".lock"):
            if not (target / ".complete").exists():
                target.mkdir(parents=True, exist_ok=True)
                with _mlflow_at(tracking_uri):
                    mlflow.artifacts.download_artifacts(artifact_uri=pinned, dst_path=str(target),
                                                        tracking_uri=tracking_uri)
                (target / ".complete").write_text(pinned)
    return target


@contextmanager
def _mlflow_at(tracking_uri: str | None) -> Iterator[None]:
    """MLflow's tracking and registry both at the given server while a models:/ or runs:/ URI is
    resolved: MLflow looks a registered name, and a run's logged model, up through the process's
    default store whatever download_artifacts is given (in a Ray worker that default is sqlite in
    its working directory, where nothing is)."""
    from mlflow.environment_variables import MLFLOW_REGISTRY_URI
    from mlflow.tracking._model_registry import utils as registry
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    if not tracking_uri:
        yield
        return
    before, variable = registry._registry_uri, os.environ.get(MLFLOW_REGISTRY_URI.name)
    registry.set_registry_uri(tracking_uri)
    try:
        with _use_tracking_uri(tracking_uri):
            yield
    finally:
        registry._registry_uri = before
        if variable is None:
            os.environ.pop(MLFLOW_REGISTRY_URI.name, None)
        else:
            os.environ[MLFLOW_REGISTRY_URI.name] = variable


@contextmanager
def _mlflow_errors(uri: str, tracking_uri: str | None) -> Iterator[None]:
    """MLflow's errors (no such model, version or run) as one line naming the field."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        first_line = str(exc.message).splitlines()[0] if exc.message else type(exc).__name__
        raise _fail(uri, f"MLflow at {tracking_uri} says: {first_line}. Check the model's name and version "
                    "(or the run id) in MLflow") from exc


def logged_model_id(uri: str) -> str | None:
    """m-ID of models:/m-ID (a logged model, registered or not); None for models:/NAME/VERSION."""
    rest = uri.removeprefix("models:/")
    return rest if uri.startswith("models:/") and re.fullmatch(r"m-[0-9a-f]+", rest) else None


def _pinned_model_uri(uri: str, tracking_uri: str | None) -> str:
    """models:/NAME/latest and models:/NAME@ALIAS as the version they name now; others as they are."""
    if not uri.startswith("models:/") or logged_model_id(uri):
        return uri  # a run's artifact, or one logged model: never another
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    name_part = uri.removeprefix("models:/")
    if "@" in name_part:
        name, alias = name_part.split("@", 1)
        return f"models:/{name}/{client.get_model_version_by_alias(name, alias).version}"
    name, version = name_part.rsplit("/", 1)
    if version != "latest":
        return uri
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        raise _fail(uri, f"MLflow at {tracking_uri} has no version of the model {name!r}")
    return f"models:/{name}/{max(int(v.version) for v in versions)}"


def hub_problem() -> str | None:
    """Why the Hugging Face hub cannot be reached from here (None when it can), decided at once:
    huggingface_hub would retry for minutes."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or HUB_ENDPOINT)
    host, port = endpoint.hostname or "", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=HUB_CONNECT_SECONDS).close()
    except OSError as exc:
        return f"the hub at {host}:{port} is not reachable from here ({exc.strerror or exc})"
    return None


def hub_unreachable_error(value: str, problem: str) -> PretrainedError:
    name = value.removeprefix("timm:")
    return _fail(value, f"{problem}. Give the weights as a file or an s3:// URI instead: where the hub is "
                 f"reachable, save them with safetensors.torch.save_file(timm.create_model({name!r}, "
                 "pretrained=True).state_dict(), 'weights.safetensors') and upload that file")


def read_hub(value: str) -> Checkpoint:
    import timm.models

    problem = hub_problem()
    if problem:
        raise hub_unreachable_error(value, problem)
    name = value.removeprefix("timm:")
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        raise _fail(value, f"timm knows no hub weights named {name!r}; timm.list_pretrained() lists them")
    from ..data.cache import cache_dir

    state_dict = timm.models.load_state_dict_from_hf(cfg.hf_hub_id, cache_dir=cache_dir() / "hub")
    return Checkpoint(value, state_dict, hub_cfg=cfg.to_dict())


# -- reading the formats ---------------------------------------------------------------------------

def read_checkpoint(value: str, data_dir: str | None = None, tracking_uri: str | None = None) -> Checkpoint:
    """The weights `value` names, read (fetched first where they are elsewhere)."""
    if value.startswith("timm:"):
        return read_hub(value)
    return read_path(local_path(value, data_dir, tracking_uri), value)


def read_path(path: Path, location: str) -> Checkpoint:
    """A state dict from a file (safetensors, torch, a Lightning checkpoint) or a directory (a model
    Raylight logged, or a Ray checkpoint)."""
    card: dict[str, Any] = {}
    if path.is_dir():
        path, card = _inside_directory(path, location)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            raw: Any = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise _fail(location, f"{path.name} is not a readable safetensors file ({exc})") from exc
    else:
        raw = _torch_load(path, location)
    state_dict, found_card = _unwrap(raw, location)
    return Checkpoint(location, state_dict, card={**found_card, **card})


def _inside_directory(path: Path, location: str) -> tuple[Path, dict[str, Any]]:
    weights = sorted(path.rglob(WEIGHTS_FILE))
    if weights:
        cards = sorted(weights[0].parent.glob(CARD_FILE))
        return weights[0], json.loads(cards[0].read_text()) if cards else {}
    lightning = sorted(path.rglob("*.ckpt"))
    if lightning:
        return lightning[0], {}
    if (path / "MLmodel").exists() or sorted(path.rglob("MLmodel")):
        raise _fail(location, "this logged model carries no weights to start from (only its exported graph: "
                    "it was logged before Raylight kept them); fine-tune from its run's checkpoint instead")
    raise _fail(location, f"the directory holds no {WEIGHTS_FILE}, no .ckpt and no MLflow model")


def _torch_load(path: Path, location: str) -> Any:
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # not classes beside tensors: no pickle at all
            raise _fail(location, f"{path.name} is not a torch or safetensors file") from exc
        if path.suffix != ".ckpt":
            raise _fail(location, f"{path.name} holds objects beside tensors: give a state dict (safetensors, "
                        "or torch.save(model.state_dict()))") from None
        # A Lightning checkpoint keeps its hyperparameters as Lightning's own objects.
        return torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as exc:
        raise _fail(location, f"{path.name} is not a torch or safetensors file ({exc})") from exc


def _unwrap(raw: Any, location: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The network's tensors from the containers checkpoints come in: a Lightning checkpoint (our
    module keeps the network as `net`), a training checkpoint's `model` or `state_dict`."""
    card: dict[str, Any] = {}
    if isinstance(raw, dict) and "state_dict" in raw and "hyper_parameters" in raw:
        params = raw["hyper_parameters"]
        card = {"architecture": params.get("architecture"), "config": dict(params.get("model") or {})}
    for key in ("state_dict", "model", "module"):
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise _fail(location, "not a state dict (a mapping of parameter names to tensors)")
    for prefix in ("net.", "module.", "model."):
        if all(key.startswith(prefix) for key in raw):
            raw = {key.removeprefix(prefix): value for key, value in raw.items()}
    return raw, card


# -- loading into a network ------------------------------------------------------------------------

def _names(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _checkpoint_filter(network: nn.Module) -> Any:
    """timm's filter for the network's family: ViTs resample position and patch embeddings; timm's
    other models convert their original checkpoints' layouts."""
    from timm.models import vision_transformer

    from .vit import VisionTransformer

    if isinstance(network, VisionTransformer):
        return vision_transformer.checkpoint_filter_fn
    if type(network).__module__.startswith("timm."):
        return getattr(sys.modules[type(network).__module__], "checkpoint_filter_fn", None)
    return None


def load_into(network: nn.Module, checkpoint: Checkpoint) -> str:
    """Load the weights into the network, adapting what timm adapts; return what was done, in a line."""
    from timm.models import load_pretrained

    cfg = dict(getattr(network, "pretrained_cfg", None) or {})
    classifiers, first_convs = _names(cfg.get("classifier")), _names(cfg.get("first_conv"))
    raw = checkpoint.state_dict
    filter_fn = _checkpoint_filter(network)
    state_dict = filter_fn(dict(raw), network) if filter_fn else dict(raw)
    own = network.state_dict()
    source_classes = _rows(state_dict, classifiers) or _rows(own, classifiers)
    source_chans = _input_chans(state_dict, first_convs) or _input_chans(own, first_convs)
    target_classes, target_chans = _rows(own, classifiers), _input_chans(own, first_convs)
    skipped = {f"{name}.{part}" for name in classifiers for part in ("weight", "bias")
               if source_classes != target_classes}
    skipped |= {f"{name}.weight" for name in first_convs if source_chans != target_chans}
    for key, tensor in own.items():  # BatchNorm's step counters: absent from many checkpoints
        if key.endswith("num_batches_tracked") and key not in state_dict:
            state_dict[key] = tensor
    _check_tensors(checkpoint.location, state_dict, own, skipped)
    load_pretrained(network, pretrained_cfg={
        **cfg, "state_dict": state_dict, "file": None, "url": None, "hf_hub_id": None, "source": "",
        "custom_load": False, "num_classes": source_classes, "input_size": (source_chans, 0, 0), "label_offset": 0,
    }, num_classes=target_classes or 0, in_chans=target_chans or 3, filter_fn=None, strict=True)
    return _what_was_done(checkpoint, raw, own, (source_classes, target_classes), (source_chans, target_chans))


def _rows(state_dict: dict[str, torch.Tensor], classifiers: tuple[str, ...]) -> int | None:
    weights = [state_dict[f"{name}.weight"] for name in classifiers if f"{name}.weight" in state_dict]
    return int(weights[0].shape[0]) if weights else None


def _input_chans(state_dict: dict[str, torch.Tensor], first_convs: tuple[str, ...]) -> int | None:
    weights = [state_dict[f"{name}.weight"] for name in first_convs if f"{name}.weight" in state_dict]
    return int(weights[0].shape[1]) if weights and weights[0].ndim == 4 else None


def _check_tensors(location: str, state_dict: dict[str, torch.Tensor], own: dict[str, torch.Tensor],
                   skipped: set[str]) -> None:
    """Every tensor but the adapted ones must be in the checkpoint with the network's shape."""
    fix = "give weights of this architecture and size, or set spec.model to the checkpoint's"
    for key, tensor in own.items():
        if key in skipped or key not in state_dict:
            continue
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise _fail(location, f"{key} is {tuple(state_dict[key].shape)} in the checkpoint but "
                        f"{tuple(tensor.shape)} in the model: {fix}")
    missing = [key for key in own if key not in skipped and key not in state_dict]
    if missing:
        raise _fail(location, f"the checkpoint has no {missing[0]} ({len(missing)} of the model's "
                    f"{len(own)} tensors missing): {fix}")
    unexpected = [key for key in state_dict if key not in own]
    if unexpected:
        raise _fail(location, f"the checkpoint has {unexpected[0]}, which the model lacks ({len(unexpected)} "
                    f"such tensors): {fix}")


def _what_was_done(checkpoint: Checkpoint, raw: dict[str, torch.Tensor], own: dict[str, torch.Tensor],
                   classes: tuple[int | None, int | None], chans: tuple[int | None, int | None]) -> str:
    done = []
    if classes[0] != classes[1]:
        done.append(f"classifier re-initialised for {classes[1]} classes (the checkpoint's has {classes[0]})")
    for key in ("pos_embed", "patch_embed.proj.weight"):
        if key in raw and key in own and tuple(raw[key].shape) != tuple(own[key].shape) and (
                key != "patch_embed.proj.weight" or raw[key].shape[-2:] != own[key].shape[-2:]):
            what = "position embeddings" if key == "pos_embed" else "patch embedding"
            done.append(f"{what} resampled from {tuple(raw[key].shape)} to {tuple(own[key].shape)}")
    if chans[0] != chans[1]:
        done.append(f"input convolution adapted from {chans[0]} to {chans[1]} channel(s)")
    adapted = "; ".join(done) if done else "every tensor as it was"
    return f"started from {checkpoint.location}: {len(own)} tensors, {adapted}"


# -- checks before Ray starts ----------------------------------------------------------------------

def check_timm_name(name: str, field_name: str = "spec.model.name") -> None:
    """A timm model name timm knows, or an error with the closest names it does know."""
    import difflib

    import timm

    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "timm.list_models() lists them"
    raise PretrainedError(f"{field_name} {name!r} is not a model timm knows: {hint}")


def check_pretrained(value: str, data_dir: str | None, tracking_uri: str | None) -> None:
    """What can be known of the weights without fetching them: the file or object is there (a local
    file is a state dict), the MLflow model or run exists, the hub is reachable."""
    from ..data.datasets import dataset_location

    if value.startswith("timm:"):
        problem = hub_problem()
        if problem:
            raise hub_unreachable_error(value, problem)
        return
    if value.startswith(("models:/", "runs:/")):
        _check_mlflow(value, tracking_uri)
        return
    location = dataset_location(value, data_dir)
    if is_object_store(location):
        from ..data.cache import check_file

        check_file(location, FIELD)
        return
    path = local_path(value, data_dir, tracking_uri)
    if path.is_file():
        read_path(path, value)  # the format too: a file that is no state dict fails here, not in every worker


def _check_mlflow(uri: str, tracking_uri: str | None) -> None:
    from mlflow.tracking import MlflowClient

    with _mlflow_errors(uri, tracking_uri):
        if uri.startswith("runs:/"):
            MlflowClient(tracking_uri).get_run(uri.removeprefix("runs:/").split("/", 1)[0])
        elif model_id := logged_model_id(uri):
            MlflowClient(tracking_uri).get_logged_model(model_id)
        else:
            name, version = _pinned_model_uri(uri, tracking_uri).removeprefix("models:/").rsplit("/", 1)
            MlflowClient(tracking_uri).get_model_version(name, version)
