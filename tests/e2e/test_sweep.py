"""ASHA sweeps end to end: a real local Ray (2 CPUs), a real MLflow server, results read back."""

from __future__ import annotations

import threading
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from raylight.api import SweepProgress, TuneSweep, parse_resource
from raylight.api.tags import TAG_PROGRESS
from raylight_trainer.runtime.storage import Storage
from raylight_trainer.training.run_state import RunSettings
from raylight_trainer.tuning.sweep import run_sweep
from tests.e2e.kill import kill_after_epoch
from tests.unit.test_data import write_imagefolder

pytestmark = pytest.mark.slow


def sweep_doc(name: str, **spec: object) -> dict:
    return {
        "apiVersion": "raylight.dev/v1alpha1", "kind": "TuneSweep", "metadata": {"name": name},
        "spec": {
            "trial": {"model": {"preset": "vit-nano", "depth": 1}, "data": {"dataset": "digits"},
                      "training": {"maxEpochs": 4, "batchSize": 64}},
            "searchSpace": {"training.learningRate": {"loguniform": [1e-4, 5e-3]}},
            "numSamples": 6,
            "scheduler": {"asha": {"gracePeriod": 1, "reductionFactor": 2}},
            "mlflow": {"experiment": f"e2e-{name}"},
            **spec,
        },
    }


def as_sweep(doc: dict) -> TuneSweep:
    resource = parse_resource(doc)
    assert isinstance(resource, TuneSweep)
    return resource


class ProgressWatcher:
    """Reads the sweep's parent run from MLflow while the sweep runs, as the operator does."""

    def __init__(self, tracking_uri: str, experiment: str) -> None:
        self.client, self.experiment = MlflowClient(tracking_uri), experiment
        self.seen: list[SweepProgress] = []
        self.finished_children_midway = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> ProgressWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            found = self.client.get_experiment_by_name(self.experiment)
            parents = self.client.search_runs([found.experiment_id], "tags.`raylight.kind` = 'TuneSweep'") \
                if found else []
            if not parents or parents[0].info.status != "RUNNING" or TAG_PROGRESS not in parents[0].data.tags:
                continue
            progress = SweepProgress.model_validate_json(parents[0].data.tags[TAG_PROGRESS])
            if progress.trials.running + progress.trials.pending > 0:
                self.seen.append(progress)
                children = child_runs(self.client, found.experiment_id, parents[0].info.run_id)
                self.finished_children_midway |= any(
                    c.info.status == "FINISHED" and c.data.tags.get("raylight.state") == "stopped_early"
                    for c in children)


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list:
    return client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=1000)


@pytest.mark.smoke  # tests/run --quick runs it whenever the trainer changed
@pytest.mark.usefixtures("ray_local")
def test_asha_sweep_more_trials_than_fit(tmp_path: Path, mlflow_server: str) -> None:
    """6 trials of 1 CPU on 2 CPUs: never more than 2 at once, none hangs; ASHA stops some early."""
    sweep = as_sweep(sweep_doc("asha", maxConcurrentTrials=6, searchSpace={
        "training.learningRate": {"loguniform": [1e-4, 5e-3]}, "model.dim": {"choice": [32, 64]}},
        mlflow={"experiment": "e2e-asha", "registeredModelName": "vit-asha-best"}))
    with ProgressWatcher(mlflow_server, "e2e-asha") as watcher:
        result = run_sweep(sweep, RunSettings(tracking_uri=mlflow_server, storage=Storage.at(tmp_path)))
    counts = result.counts()
    assert result.max_concurrent_trials == 2  # lowered from 6 to what fits
    # While it ran, the parent run told how far it was: a trial stopped early was counted (and
    # its child run ended) before the sweep ended.
    midway = [p for p in watcher.seen if p.trials.stopped_early >= 1
              and p.trials.succeeded + p.trials.stopped_early < 6]
    assert midway, [p.trials for p in watcher.seen]
    assert midway[0].best_trial is not None and midway[0].trials.total == 6
    assert watcher.finished_children_midway, "no child run ended while the sweep ran"
    assert counts["total"] == 6 and counts["failed"] == 0
    # Asynchronous ASHA judges a trial against the results its rung has so far: the first trial to
    # reach a rung always goes on, and of two trials in lockstep the faster (here dim 32, the worse
    # one) reaches each rung first. So which trials stop depends on timing; that some stop does not.
    assert counts["stopped_early"] >= 1, counts
    assert counts["succeeded"] + counts["stopped_early"] == 6

    client = MlflowClient(mlflow_server)
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags["raylight.kind"] == "TuneSweep" and parent.data.tags["raylight.name"] == "asha"
    assert parent.data.params["scheduler.asha.gracePeriod"] == "1"
    assert parent.data.params["objective.metric"] == "val_acc"
    assert "search_space.training.learningRate" in parent.data.params
    assert result.best is not None
    assert parent.data.metrics["best_val_acc"] == pytest.approx(result.best.metric)
    assert parent.data.metrics["trials_stopped_early"] == counts["stopped_early"]
    final = SweepProgress.model_validate_json(parent.data.tags[TAG_PROGRESS])
    assert final.trials.stopped_early == counts["stopped_early"] and final.trials.running == 0
    assert final.best_trial is not None and final.best_trial.id == result.best.trial_id

    children = child_runs(client, result.experiment_id, result.parent_run_id)
    assert len(children) == 6
    by_trial = {run.data.tags["raylight.trial_id"]: run for run in children}
    for trial in result.trials:
        run = by_trial[trial.trial_id]
        history = client.get_metric_history(run.info.run_id, "val_acc")
        steps = sorted(m.step for m in history)
        assert steps == list(range(1, trial.epochs + 1)), (trial, steps)
        assert run.data.tags["raylight.stopped_early"] == str(trial.state == "stopped_early").lower()
        assert run.data.tags["raylight.state"] == trial.state
        assert float(run.data.params["training.learningRate"]) == pytest.approx(
            trial.config["training.learningRate"], rel=1e-6)
        assert run.info.status == "FINISHED"
        if trial.state == "stopped_early":
            assert trial.epochs < 4
    assert sum(t.epochs for t in result.trials) < 6 * 4  # ASHA saved work
    assert {"trial-spec.yaml"} <= {a.path for a in client.list_artifacts(children[0].info.run_id)}

    # The best trial's checkpoint is the logged model.
    versions = client.search_model_versions("name = 'vit-asha-best'")
    assert len(versions) == 1 and versions[0].run_id == result.parent_run_id
    assert result.model_uri == f"models:/vit-asha-best/{versions[0].version}"
    card = mlflow.models.get_model_info(result.model_uri).metadata
    assert card["config"]["dim"] == result.best.config["model.dim"] and card["architecture"] == "vit"
    assert card["classes"] == [str(digit) for digit in range(10)]
    # Each trial's console output is kept on its run: a line per epoch it trained.
    for run in children:
        kept = trial_log(client, run.info.run_id)
        trial = next(t for t in result.trials if t.run_id == run.info.run_id)
        assert "worker 1/1 on " in kept and f"epoch {trial.epochs}/4 " in kept, kept
    model = mlflow.pytorch.load_model(result.model_uri)
    assert model(torch.zeros(3, *card["input"]["shape"])).shape == (3, card["config"]["num_classes"])


@pytest.mark.usefixtures("ray_local")
def test_a_failed_trial_does_not_fail_the_sweep_but_fails_the_command(
    workdir: Path, mlflow_server: str, capsys: pytest.CaptureFixture
) -> None:
    """`raylight run` as a script sees it: exit 1 when a trial failed, 0 with --allow-failed-trials
    (the cluster's way); the failed trial's log, kept in MLflow, ends with why it failed."""
    import io
    import json

    import yaml
    from rich.console import Console

    from raylight.cli import main
    from raylight_trainer.console.summary import run_exit_code

    write_imagefolder(workdir / "pets", classes=("cat", "dog"), per_class=8)
    doc = sweep_doc("with-failure", numSamples=4, searchSpace={"data.path": {"choice": ["pets", "missing"]}})
    doc["spec"]["trial"]["data"] = {"dataset": "imagefolder", "path": "pets"}
    doc["spec"]["trial"]["training"]["maxEpochs"] = 1
    doc["spec"]["trial"]["faultTolerance"] = {"maxFailures": 0}
    doc["spec"]["mlflow"]["registeredModelName"] = "pets-best"
    manifest = workdir / "sweep.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    command = ["run", str(manifest), "--tracking-uri", mlflow_server, "--data-dir", str(workdir), "-o", "json"]
    assert main(command) == 1
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    counts = summary["trials"]
    assert counts["failed"] >= 1 and counts["succeeded"] >= 1, counts
    assert f"{counts['failed']} trial(s) failed" in captured.err and "--allow-failed-trials" in captured.err
    client = MlflowClient(mlflow_server)
    assert client.get_run(summary["mlflow"]["parentRunId"]).info.status == "FINISHED"
    children = {r.data.tags["raylight.trial_id"]: r for r in client.search_runs(
        [summary["mlflow"]["experimentId"]], f"tags.`mlflow.parentRunId` = '{summary['mlflow']['parentRunId']}'")}
    for trial_id, error in summary["failedTrials"].items():
        run = children[trial_id]
        assert run.info.status == "FAILED" and str(workdir / "missing") in run.data.tags["raylight.error"]
        assert str(workdir / "missing") in error
        kept = trial_log(client, run.info.run_id)
        assert "Traceback" in kept and str(workdir / "missing") in kept.strip().splitlines()[-1], kept
    succeeded = [r for r in children.values() if r.data.tags["raylight.state"] == "succeeded"]
    assert "epoch 1/1 " in trial_log(client, succeeded[0].info.run_id)
    # The model's card names its outputs: the image folder's class folders, in label order.
    assert mlflow.models.get_model_info(summary["mlflow"]["modelUri"]).metadata["classes"] == ["cat", "dog"]
    # The cluster's driver passes --allow-failed-trials: this summary, and exit 0 (tests/unit/test_cli).
    assert run_exit_code([summary], True, Console(file=io.StringIO())) == 0


def trial_log(client: MlflowClient, run_id: str) -> str:
    """A training worker's output, as the trainer keeps it in MLflow (what `raylight logs` reads)."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        return Path(client.download_artifacts(run_id, "logs/worker-0.log", scratch)).read_text()


@pytest.mark.usefixtures("ray_local")
def test_a_trial_killed_mid_run_resumes_from_its_checkpoint(tmp_path: Path, mlflow_server: str) -> None:
    """A one-worker trial trains in its Tune trial's own process: SIGKILL that process after epoch 2
    and Tune starts the trial again from its last checkpoint (faultTolerance.maxFailures), so every
    epoch is trained and logged once, and its best checkpoint is the logged model."""
    doc = sweep_doc("trial-killed", numSamples=1, scheduler={"fifo": {}},
                    mlflow={"experiment": "e2e-trial-killed", "registeredModelName": ""})
    doc["spec"]["trial"]["faultTolerance"] = {"maxFailures": 1, "checkpointsToKeep": 1}
    client = MlflowClient(mlflow_server)
    killer, killed = kill_after_epoch(client, "e2e-trial-killed", "tags.`raylight.kind` = 'Trial'", 2,
                                      "ImplicitFunc")
    result = run_sweep(as_sweep(doc), RunSettings(tracking_uri=mlflow_server, storage=Storage.at(tmp_path)))
    killer.join(timeout=5)
    assert killed, "the trial's process was never killed"
    assert result.counts()["succeeded"] == 1, result.trials
    (trial,) = result.trials
    assert trial.epochs == 4 and trial.run_id
    steps = [m.step for m in client.get_metric_history(trial.run_id, "val_acc")]
    assert sorted(set(steps)) == [1, 2, 3, 4]
    assert steps.count(1) == 1, f"epoch 1 ran twice: the trial restarted instead of resuming ({steps})"
    # Only one checkpoint kept (checkpointsToKeep: 1) and still a model: the best one, by val_acc.
    assert result.model_uri and client.get_run(result.parent_run_id).data.metrics["best_val_acc"] == max(
        m.value for m in client.get_metric_history(trial.run_id, "val_acc"))
    kept = trial_log(client, trial.run_id)
    assert "resumed" in kept and "epoch 4/4 " in kept, kept
    # checkpointsToKeep: 1, plus the latest where it is not the best: a checkpoint whose report died
    # with the killed process is overwritten by the restarted trial (Tune numbers them from its record).
    checkpoints = [path for path in tmp_path.rglob("checkpoint_*") if path.is_dir()]
    assert 1 <= len(checkpoints) <= 2, sorted(str(p.relative_to(tmp_path)) for p in checkpoints)


@pytest.mark.usefixtures("ray_local")
def test_a_signal_after_the_last_trial_ended_finishes_the_sweep(
    tmp_path: Path, mlflow_server: str, capsys: pytest.CaptureFixture
) -> None:
    """SIGTERM in the moment between the last trial's end and Tune's return (CI's SIGTERM test once
    landed there): every trial has ended, nothing is left to resume, so the sweep finishes as when
    the signal comes while the best model is logged: its model logged, its parent run FINISHED."""
    import signal

    from ray import tune

    from raylight_trainer.runtime.interrupt import handling_signals

    class SignalWhenTheLastTrialEnds(tune.Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial: object, **info: object) -> None:
            if all(t is trial or t.status == "TERMINATED" for t in trials):  # this one is ending
                signal.raise_signal(signal.SIGTERM)  # to this process: the driver's handler takes it

    doc = sweep_doc("late-signal", numSamples=1, scheduler={"fifo": {}})
    doc["spec"]["trial"]["training"]["maxEpochs"] = 1
    with handling_signals():
        result = run_sweep(as_sweep(doc), RunSettings(tracking_uri=mlflow_server, storage=Storage.at(tmp_path)),
                           callbacks=[SignalWhenTheLastTrialEnds()])
    assert result.interrupted is None and result.model_uri and result.counts()["succeeded"] == 1
    assert "SIGTERM received after the training ended" in capsys.readouterr().err
    assert MlflowClient(mlflow_server).get_run(result.parent_run_id).info.status == "FINISHED"


@pytest.mark.usefixtures("ray_local")
def test_a_sweep_saved_with_the_old_module_paths_resumes(tmp_path: Path, mlflow_server: str) -> None:
    """A sweep interrupted on a release before the trainer's rooms: Tune's saved state (tuner.pkl)
    names the sweep's progress callback by its old path, `raylight_trainer.sweep_progress`. The
    state is made here with that path (the class registered there, as it was), then the path is
    gone, as after the move; the resume must still read the state and finish the sweep."""
    import signal
    import sys
    import types

    from ray import tune

    from raylight_trainer.runtime.interrupt import handling_signals
    from raylight_trainer.tuning import progress
    from raylight_trainer.tuning.old_paths import OLD_PATHS

    class InterruptAfterTheFirstTrial(tune.Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial: object, **info: object) -> None:
            signal.raise_signal(signal.SIGINT)  # the driver's handler stops Tune as Ctrl-C does

    old = "raylight_trainer.sweep_progress"
    assert OLD_PATHS[old] == ("raylight_trainer.tuning.progress", ("ProgressReporter",))
    before = types.ModuleType(old)
    before.ProgressReporter = progress.ProgressReporter  # type: ignore[attr-defined]
    doc = sweep_doc("old-paths", numSamples=2, maxConcurrentTrials=1, scheduler={"fifo": {}})
    doc["spec"]["trial"]["training"]["maxEpochs"] = 1
    settings = RunSettings(tracking_uri=mlflow_server, storage=Storage.at(tmp_path))
    sys.modules[old], progress.ProgressReporter.__module__ = before, old
    try:
        with handling_signals():
            first = run_sweep(as_sweep(doc), settings, callbacks=[InterruptAfterTheFirstTrial()])
    finally:
        progress.ProgressReporter.__module__ = "raylight_trainer.tuning.progress"
        del sys.modules[old]
    assert first.interrupted == signal.SIGINT and first.counts()["succeeded"] == 1, first.counts()
    assert old.encode() in (tmp_path / "default" / "old-paths" / "tuner.pkl").read_bytes()

    resumed = run_sweep(as_sweep(doc), settings)
    assert resumed.resumed and resumed.interrupted is None and resumed.model_uri
    assert resumed.counts()["succeeded"] == 2 and resumed.parent_run_id == first.parent_run_id
