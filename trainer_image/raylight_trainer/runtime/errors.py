"""Errors a run reports to its user as a message, not a traceback (kept apart from the modules that
raise them, which import torch: the driver catches them before it has loaded torch)."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset that is missing or malformed; the message names the path and the expected layout."""


class StorageError(ValueError):
    """Storage a run cannot use (an object store out of reach, a missing bucket, refused credentials);
    the message names the URI and where the credentials came from."""


class CheckpointsUnreadable(StorageError):
    """A finished run's checkpoints that cannot be read back (a storage hiccup, permissions, a torn
    copy): its model cannot be logged, so the run must not be called succeeded. Names the path."""


class PretrainedError(ValueError):
    """Weights to start from that cannot be had or do not fit the model; the message names
    spec.model.pretrained (or spec.model.name) and what to change."""
