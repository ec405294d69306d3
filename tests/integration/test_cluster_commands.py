"""`raylight get` and `raylight wait` (also `kubectl raylight ...`) against the real API server and
operator, reading what a user reads: table rows, messages and exit codes.

Every command runs from a base install (`pip install raylight`, no trainer extra): that is where a
laptop that only talks to a cluster runs them.

KubeRay's RayJob status is written by the test, as in test_operator (no kubelet runs pods here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import Cluster, OperatorProcess, wait_for
from .test_operator import apply_training_job, gpu_sweep, status_of

CLI_PYTHON: list[Path] = []
"""The base install's python (set once per module by `from_a_base_install`)."""


@pytest.fixture(autouse=True, scope="module")
def from_a_base_install(base_install: Path) -> None:
    CLI_PYTHON[:] = [base_install]


def cli(*args: str) -> list[str]:
    return [str(CLI_PYTHON[0]), "-m", "raylight.cli", *args]


def raylight(cluster: Cluster, *args: str, kubeconfig: Path | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig or cluster.kubeconfig), "COLUMNS": "200"}
    return subprocess.run(cli(*args), env=env, capture_output=True,
                          text=True, timeout=timeout)


def experiment(client: Any, name: str) -> str:
    found = client.get_experiment_by_name(name)
    return str(found.experiment_id if found else client.create_experiment(name))


def sweep_running(cluster: Cluster, namespace: str, mlflow_server: str, body: dict[str, Any]) -> tuple[Any, str, str]:
    """The gpu-sweep example's RayJob running and its parent run opened, as the trainer opens it:
    (MLflow client, experiment id, parent run id)."""
    from mlflow.tracking import MlflowClient

    from raylight.api.tags import TAG_UID

    cluster.patch_status("rayjob", "ts-gpu-sweep", namespace,
                         {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    client = MlflowClient(mlflow_server)
    experiment_id = experiment(client, "vit-cifar10")  # the example's spec.mlflow.experiment
    return client, experiment_id, client.create_run(experiment_id, tags={TAG_UID: body["metadata"]["uid"]}).info.run_id


def start_wait(cluster: Cluster, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "COLUMNS": "200"}
    return subprocess.Popen(cli("wait", *args), env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_get_lists_both_kinds_and_wait_follows_a_sweep_to_success(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    assert kube_cluster.apply(gpu_sweep(), namespace).returncode == 0
    apply_training_job(kube_cluster, namespace)
    wait_for(lambda: status_of(kube_cluster, "ts", "gpu-sweep", namespace).get("phase") == "Pending",
             what="the sweep's first status")

    listed = raylight(kube_cluster, "get", "-n", namespace)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:] if line.strip()}
    assert set(rows) == {"tunesweep/gpu-sweep", "trainingjob/vit-digits"}, listed.stdout
    assert rows["tunesweep/gpu-sweep"][1:3] == ["Pending", "0/24"]
    as_json = json.loads(raylight(kube_cluster, "get", "-n", namespace, "-o", "json").stdout)
    assert {(r["kind"], r["name"], r["namespace"]) for r in as_json} == {
        ("TuneSweep", "gpu-sweep", namespace), ("TrainingJob", "vit-digits", namespace)}

    # The namespace comes from the kubeconfig's context when -n is not given, as with kubectl.
    config = yaml.safe_load(kube_cluster.kubeconfig.read_text())
    config["contexts"][0]["context"]["namespace"] = namespace
    with_namespace = tmp_path / "kubeconfig"
    with_namespace.write_text(yaml.safe_dump(config))
    by_context = raylight(kube_cluster, "get", "-o", "json", kubeconfig=with_namespace)
    assert len(json.loads(by_context.stdout)) == 2, by_context.stderr

    waiting = start_wait(kube_cluster, "gpu-sweep", "-n", namespace, "--timeout", "120")
    kube_cluster.patch_status("rayjob", "ts-gpu-sweep", namespace, {
        "jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "startTime": "2026-11-25T10:00:00Z",
        "endTime": "2026-11-25T11:00:00Z"})
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err
    assert "TuneSweep gpu-sweep succeeded" in out
    # Once it has ended, wait answers at once.
    again = raylight(kube_cluster, "wait", "tunesweep/gpu-sweep", "-n", namespace, "-o", "json")
    assert again.returncode == 0 and json.loads(again.stdout)["phase"] == "Succeeded"

    # kubectl finds the plugin on PATH: `kubectl raylight get`.
    plugin = shutil.which("kubectl-raylight", path=str(CLI_PYTHON[0].parent))
    assert plugin, "the kubectl-raylight script is not installed next to raylight"
    env = {**os.environ, "PATH": f"{Path(plugin).parent}:{os.environ['PATH']}", "COLUMNS": "200"}
    through_kubectl = subprocess.run(
        [str(kube_cluster.bin / "kubectl"), "raylight", "get", "-n", namespace, "-o", "json"],
        env={**env, "KUBECONFIG": str(kube_cluster.kubeconfig)}, capture_output=True, text=True, timeout=60)
    assert through_kubectl.returncode == 0, through_kubectl.stderr
    assert {r["phase"] for r in json.loads(through_kubectl.stdout) if r["name"] == "gpu-sweep"} == {"Succeeded"}


def test_wait_exits_non_zero_with_the_reason_when_the_run_fails(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    apply_training_job(kube_cluster, namespace)

    timed_out = raylight(kube_cluster, "wait", "vit-digits", "-n", namespace, "--timeout", "2")
    assert timed_out.returncode == 3 and "timed out after 2 s" in timed_out.stderr, timed_out

    waiting = start_wait(kube_cluster, "tj/vit-digits", "-n", namespace)
    kube_cluster.patch_status("rayjob", "tj-vit-digits", namespace, {
        "jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded",
        "message": "The RayJob has passed the activeDeadlineSeconds."})
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 1, (out, err)
    assert "TrainingJob vit-digits failed" in err and "activeDeadlineSeconds" in err


def test_a_wrong_name_says_what_exists_and_how_to_fix_it(kube_cluster: Cluster, namespace: str) -> None:
    missing = raylight(kube_cluster, "wait", "no-such-run", "-n", namespace)
    assert missing.returncode == 1
    assert f"no TrainingJob or TuneSweep named no-such-run in namespace {namespace}" in missing.stderr
    assert "Traceback" not in missing.stderr
    wrong_kind = raylight(kube_cluster, "get", "pods/x", "-n", namespace)
    assert wrong_kind.returncode == 1 and "unknown kind 'pods'" in wrong_kind.stderr
    wrong_context = raylight(kube_cluster, "get", "--context", "nowhere")
    assert wrong_context.returncode == 1 and "--context nowhere: no such context" in wrong_context.stderr
    nothing = raylight(kube_cluster, "get", "-n", namespace)
    assert nothing.returncode == 0 and f"No TrainingJobs or TuneSweeps in namespace {namespace}" in nothing.stdout


def test_trials_shows_the_sweeps_trial_table_from_its_mlflow_runs(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, mlflow_server: str
) -> None:
    """The trial runs as the trainer leaves them (tags of raylight.api.tags); the node test reads a
    real sweep's through the API server's proxy."""
    from raylight.api.tags import TAG_PARENT_RUN_ID, TAG_STATE, TAG_TRIAL_ID

    assert kube_cluster.apply(gpu_sweep(), namespace).returncode == 0
    body = wait_for(lambda: kube_cluster.get("ts", "gpu-sweep", namespace), what="the sweep")
    pending = raylight(kube_cluster, "trials", "gpu-sweep", "-n", namespace)
    assert pending.returncode == 0 and "0 trial(s) started, 24 not yet" in pending.stdout, pending
    client, experiment_id, parent = sweep_running(kube_cluster, namespace, mlflow_server, body)
    trials = {"a_00000": ("succeeded", 60, 0.91), "a_00001": ("stopped_early", 5, 0.42), "a_00002": (None, 2, 0.3)}
    runs = {}
    for trial_id, (state, epochs, accuracy) in trials.items():
        run = client.create_run(experiment_id, tags={TAG_PARENT_RUN_ID: parent, TAG_TRIAL_ID: trial_id}).info.run_id
        client.log_param(run, "sampled.training.learningRate", "0.0012")
        for epoch in range(1, epochs + 1):
            client.log_metric(run, "epoch", epoch, step=epoch)
        client.log_metric(run, "val_acc", accuracy, step=epochs)
        if state:
            client.set_tag(run, TAG_STATE, state)
            client.set_terminated(run, "FINISHED")
        runs[trial_id] = run
    wait_for(lambda: status_of(kube_cluster, "ts", "gpu-sweep", namespace).get("mlflow", {}).get("runId") == parent,
             what="the parent run in status")

    shown = raylight(kube_cluster, "trials", "gpu-sweep", "-n", namespace)
    assert shown.returncode == 0, shown.stderr
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[1:-1]]
            for line in shown.stdout.splitlines() if line.startswith("│")}
    assert rows["a_00000"][1:4] == ["TERMINATED", "60/60", "0.9100"]
    assert rows["a_00001"][1:4] == ["STOPPED", "5/60", "0.4200"]
    assert rows["a_00002"][1:3] == ["RUNNING", "2/60"]
    assert rows["a_00000"][4] == "learningRate=0.0012" and rows["a_00000"][5] == runs["a_00000"]
    assert "3 trial(s) started, 21 not yet" in shown.stdout
    as_json = json.loads(raylight(kube_cluster, "trials", "gpu-sweep", "-n", namespace, "-o", "json").stdout)
    assert as_json["pending"] == 21 and [t["state"] for t in as_json["trials"]] == [
        "succeeded", "stopped_early", "running"]
    assert as_json["trials"][0]["config"] == {"training.learningRate": 0.0012}

    not_a_sweep = raylight(kube_cluster, "trials", "tj/gpu-sweep", "-n", namespace)
    assert not_a_sweep.returncode == 1 and "no TrainingJob named gpu-sweep" in not_a_sweep.stderr


def test_model_gives_the_best_models_uri_from_status_and_downloads_its_files(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, mlflow_server: str, tmp_path: Path
) -> None:
    import torch
    from mlflow.tracking import MlflowClient

    from raylight.api import ModelSpec
    from raylight.api.tags import TAG_UID
    from raylight_trainer.model import VisionTransformer, config_from_spec
    from raylight_trainer.tracking.mlflow_runs import log_model
    from raylight_trainer.training.workers import input_shape, model_card

    apply_training_job(kube_cluster, namespace)
    body = kube_cluster.get("tj", "vit-digits", namespace)
    assert body is not None
    early = raylight(kube_cluster, "model", "vit-digits", "-n", namespace)
    assert early.returncode == 1 and "has no model yet (Pending)" in early.stderr, early

    # The trainer's own end of a run: the model logged (pt2), registered, the run tagged with its URI.
    client = MlflowClient(mlflow_server)
    experiment_id = experiment(client, "vit-digits")  # the example's spec.mlflow.experiment
    run_id = client.create_run(experiment_id, tags={TAG_UID: body["metadata"]["uid"]}).info.run_id
    network = VisionTransformer(config_from_spec(ModelSpec(preset="vit-nano", image_size=16), 10, 1)).eval()
    uri = log_model(mlflow_server, run_id, network, input_shape(network), f"digits-{namespace}",
                    model_card(network, "digits"))
    assert uri == f"models:/digits-{namespace}/1"
    kube_cluster.patch_status("rayjob", "tj-vit-digits", namespace,
                              {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    wait_for(lambda: status_of(kube_cluster, "tj", "vit-digits", namespace).get("mlflow", {}).get("modelUri") == uri,
             what="the model URI in status")

    shown = raylight(kube_cluster, "model", "tj/vit-digits", "-n", namespace)
    assert shown.returncode == 0 and f"best model {uri}" in shown.stdout, shown
    fetched = raylight(kube_cluster, "model", "vit-digits", "-n", namespace, "--download", str(tmp_path / "m"),
                       "-o", "json")
    assert fetched.returncode == 0, fetched.stderr
    files = {Path(f).relative_to(tmp_path / "m").as_posix() for f in json.loads(fetched.stdout)["files"]}
    assert {"MLmodel", "data/model.pt2"} <= files, files
    import mlflow.pytorch

    images = torch.randn(3, *input_shape(network))
    with torch.no_grad():
        assert torch.allclose(mlflow.pytorch.load_model(str(tmp_path / "m"))(images), network(images), atol=1e-5)


def test_logs_reads_the_driver_and_trial_logs_the_trainer_kept_in_mlflow(
    kube_cluster: Cluster, namespace: str, operator: OperatorProcess, mlflow_server: str
) -> None:
    """No pod runs here, so the copies kept in MLflow are read (the node test reads a live pod's log)."""
    from raylight.api.tags import TAG_PARENT_RUN_ID, TAG_TRIAL_ID

    assert kube_cluster.apply(gpu_sweep(), namespace).returncode == 0
    body = wait_for(lambda: kube_cluster.get("ts", "gpu-sweep", namespace), what="the sweep")
    early = raylight(kube_cluster, "logs", "gpu-sweep", "-n", namespace)
    assert early.returncode == 1 and "is Pending: no log of its driver yet (-f waits for it)" in early.stderr, early

    client, experiment_id, parent = sweep_running(kube_cluster, namespace, mlflow_server, body)
    client.log_text(parent, "trial a_00001 started\n", "logs/driver.log")
    trial = client.create_run(experiment_id, tags={TAG_PARENT_RUN_ID: parent, TAG_TRIAL_ID: "a_00001"}).info.run_id
    client.log_text(trial, "worker 1/2 on node-a\nepoch 1/60 val_acc=0.5000\n", "logs/worker-0.log")
    client.log_text(trial, "worker 2/2 on node-b\n", "logs/worker-1.log")
    wait_for(lambda: status_of(kube_cluster, "ts", "gpu-sweep", namespace).get("mlflow", {}).get("runId") == parent,
             what="the parent run in status")

    driver = raylight(kube_cluster, "logs", "gpu-sweep", "-n", namespace)
    assert driver.returncode == 0 and driver.stdout == "trial a_00001 started\n", driver
    assert f"MLflow run {parent} (logs/driver.log)" in driver.stderr
    workers = raylight(kube_cluster, "logs", "gpu-sweep", "--trial", "00001", "-n", namespace)
    assert workers.returncode == 0, workers.stderr
    assert workers.stdout == ("==> worker-0.log <==\nworker 1/2 on node-a\nepoch 1/60 val_acc=0.5000\n"
                              "==> worker-1.log <==\nworker 2/2 on node-b\n")
    as_json = json.loads(raylight(kube_cluster, "logs", "gpu-sweep", "--trial", "a_00001", "-n", namespace,
                                  "-o", "json").stdout)
    assert as_json["logs"]["worker-1.log"] == "worker 2/2 on node-b\n"
    unknown = raylight(kube_cluster, "logs", "gpu-sweep", "--trial", "7", "-n", namespace)
    assert unknown.returncode == 1 and "no log of trial 7's workers yet" in unknown.stderr, unknown
    wrong_flag = raylight(kube_cluster, "logs", "gpu-sweep", "--workers", "-n", namespace)
    assert wrong_flag.returncode == 1 and "use --trial ID (raylight trials gpu-sweep lists them)" in wrong_flag.stderr

    # -f prints what the log gains and ends when the trial's run does.
    env = {**os.environ, "KUBECONFIG": str(kube_cluster.kubeconfig)}
    following = subprocess.Popen(cli("logs", "gpu-sweep", "--trial", "a_00001", "-f", "-n", namespace), env=env,
                                 text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: following.poll() is None and _exists(client, trial, "logs/worker-0.log"), what="the follower")
    client.log_text(trial, "worker 1/2 on node-a\nepoch 1/60 val_acc=0.5000\nepoch 2/60 val_acc=0.7000\n",
                    "logs/worker-0.log")
    client.set_terminated(trial, "FINISHED")
    out, err = following.communicate(timeout=60)
    assert following.returncode == 0, err
    assert out.count("epoch 1/60") == 1 and out.index("epoch 1/60") < out.index("epoch 2/60"), out

    job_trial = raylight(kube_cluster, "logs", "trainingjob/nothing", "-n", namespace)
    assert job_trial.returncode == 1 and "no TrainingJob named nothing" in job_trial.stderr


def _exists(client: Any, run_id: str, path: str) -> bool:
    return any(f.path == path for f in client.list_artifacts(run_id, path.rsplit("/", 1)[0]))


def test_the_base_install_has_no_trainer_packages_and_run_says_what_to_install(kube_cluster: Cluster) -> None:
    """The other tests here pass on a base install; this one shows it is one, and that the one
    command that trains says what it lacks instead of a traceback."""
    trainer_modules = ("torch", "ray", "mlflow", "pyarrow", "pytorch_lightning")
    probe = subprocess.run([str(CLI_PYTHON[0]), "-c", "import importlib.util as u, json, sys; print(json.dumps("
                            "[m for m in sys.argv[1:] if u.find_spec(m)]))", *trainer_modules],
                           capture_output=True, text=True, check=True)
    assert json.loads(probe.stdout) == []
    example = Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"
    run = raylight(kube_cluster, "run", str(example))
    assert run.returncode == 1, run
    assert "pip install 'raylight[trainer]'" in run.stderr and "torch" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    validated = raylight(kube_cluster, "validate", str(example))
    assert validated.returncode == 0 and "ok" in validated.stdout, validated
