"""Real failures for the e2e tests: SIGKILL a Ray actor's process once its run has logged an epoch."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from mlflow.tracking import MlflowClient


def kill_after_epoch(client: MlflowClient, experiment: str, run_filter: str, epoch: int,
                     actor_class: str) -> tuple[threading.Thread, list[int]]:
    """Starts a thread that waits (up to 300 s) until the run that `run_filter` finds has logged
    `epoch`, then kills every live actor of `actor_class`; returns it and the PIDs it killed."""
    from ray.util.state import list_actors

    killed: list[int] = []

    def watch() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            time.sleep(0.5)
            found = client.get_experiment_by_name(experiment)
            runs = client.search_runs([found.experiment_id], run_filter) if found else []
            if not runs or runs[0].data.metrics.get("epoch", 0) < epoch:
                continue
            for actor in list_actors(filters=[("class_name", "=", actor_class), ("state", "=", "ALIVE")]):
                os.kill(actor.pid, signal.SIGKILL)
                killed.append(actor.pid)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, killed


def train_through_a_worker_kill(resource: Any, settings: Any, client: MlflowClient, experiment: str,
                                epoch: int) -> Any:
    """Runs a TrainingJob and SIGKILLs its training worker once it has logged `epoch`; checks that
    the worker died, the run succeeded and resumed (every epoch logged, the first one once).
    Returns the job's result."""
    from raylight_trainer.training.job import run_training_job

    name = resource.metadata.name
    killer, killed = kill_after_epoch(client, experiment, f"tags.`raylight.name` = '{name}'", epoch, "RayTrainWorker")
    result = run_training_job(resource, settings)
    killer.join(timeout=5)
    assert killed, "the worker was never killed"
    assert result.state == "succeeded", result.error
    steps = [m.step for m in client.get_metric_history(result.run_id, "val_acc")]
    assert sorted(set(steps)) == list(range(1, resource.spec.training.max_epochs + 1)), steps
    assert steps.count(1) == 1, f"epoch 1 ran twice: the run started again instead of resuming ({steps})"
    return result
