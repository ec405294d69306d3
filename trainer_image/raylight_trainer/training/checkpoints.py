"""A finished Ray Train run's checkpoints: its record read back, the best one's model, the strays pruned."""

from __future__ import annotations

import logging
import posixpath

import ray
import torch

from ..runtime.errors import CheckpointsUnreadable
from ..runtime.storage import Storage
from .workers import load_checkpoint_model

log = logging.getLogger(__name__)


def train_result(run_dir: Storage) -> ray.train.Result | None:
    """Ray Train's record of a run directory: its checkpoints and their metrics (None where the
    directory does not exist: the run trained elsewhere, in its trial's own process).

    Raises CheckpointsUnreadable, naming the directory, when it is there but cannot be read: taken
    for "no checkpoints", a storage hiccup made a run succeed without its model."""
    from ray.train import Result

    try:
        if not run_dir.exists():
            return None
        return Result.from_path(run_dir.path, storage_filesystem=run_dir.ray_filesystem)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointsUnreadable(f"the checkpoints under {run_dir} cannot be read: {reason}") from exc


def best_checkpoint_model(result: ray.train.Result | None, metric: str, mode: str) -> torch.nn.Module | None:
    """The model at the best checkpoint of a Ray Train run's record (None if it kept none); from an
    object store, the checkpoint is downloaded to a temporary directory first."""
    if result is None:
        return None
    candidates = [(ckpt, m) for ckpt, m in (result.best_checkpoints or []) if metric in m]
    if not candidates:
        return None
    pick = max if mode == "max" else min
    checkpoint, _ = pick(candidates, key=lambda item: float(item[1][metric]))
    with checkpoint.as_directory() as directory:
        return load_checkpoint_model(directory)


def prune_unrecorded_checkpoints(run_dir: Storage, result: ray.train.Result | None) -> list[str]:
    """Delete the checkpoints of a finished Ray Train run that its record (`train_result(run_dir)`)
    does not list; their names.

    Ray Train's controller learns of a worker's checkpoint by polling it (every few seconds). A
    worker that dies takes the reports not yet collected with it: their checkpoints were uploaded,
    but are never counted against checkpointsToKeep nor deleted, so every failure could leave some
    behind for good. Only for a run that ended well: nothing resumes from them."""
    from pyarrow.fs import FileSelector, FileType

    if result is None:
        return []
    recorded = {posixpath.normpath(ckpt.path) for ckpt, _ in result.best_checkpoints or []}
    if result.checkpoint is not None:
        recorded.add(posixpath.normpath(result.checkpoint.path))
    if not recorded:
        return []  # a record without checkpoints: not one to judge the directory by
    filesystem, pruned = run_dir.filesystem, []
    try:
        for info in filesystem.get_file_info(FileSelector(run_dir.path, allow_not_found=True)):
            if (info.type == FileType.Directory and info.base_name.startswith("checkpoint_")
                    and posixpath.normpath(info.path) not in recorded):
                filesystem.delete_dir(info.path)
                pruned.append(info.base_name)
    except OSError as exc:  # only space: the run's results stand without it
        log.warning("could not delete the unrecorded checkpoints under %s: %s", run_dir, exc)
    return pruned
