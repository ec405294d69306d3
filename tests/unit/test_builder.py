"""build_rayjob is pure: each example manifest has a golden RayJob (the trainer's manifest inside).

Regenerate after an intended change with RAYLIGHT_UPDATE_GOLDEN=1 and review the diff."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from raylight.api import ManifestError, Resource, load_manifests, parse_resource
from raylight.operator.builder import (
    MANIFEST_ANNOTATION,
    MAX_RAYJOB_NAME,
    BuildError,
    OperatorSettings,
    build_rayjob,
    rayjob_name,
    run_hash,
    worker_shape,
)
from tests.examples import CLUSTER_MANIFESTS, LOCAL_ONLY

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"
SETTINGS = OperatorSettings(trainer_image="raylight-trainer:test", mlflow_tracking_uri="http://mlflow.mlflow:5000")
UID = "0d5f2b5e-7c7a-4f0e-9a51-3b1c2d4e5f60"


class _Readable(yaml.SafeDumper):
    """Golden files for people: no anchors, multi-line strings as blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _block_strings(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)


_Readable.add_representer(str, _block_strings)


def with_identity(doc: dict[str, Any], namespace: str = "team-a") -> dict[str, Any]:
    doc = dict(doc)
    doc["metadata"] = {**doc["metadata"], "namespace": namespace, "uid": UID}
    return doc


def example(name: str) -> Any:
    doc = yaml.safe_load((REPO / "examples" / name).read_text())
    return parse_resource(with_identity(doc))


@pytest.mark.parametrize("name", [p.name for p in CLUSTER_MANIFESTS])
def test_golden(name: str) -> None:
    resource = example(name)
    rendered = yaml.dump(build_rayjob(resource, SETTINGS), Dumper=_Readable, sort_keys=True)
    golden = GOLDEN / f"{Path(name).stem}.yaml"
    if os.environ.get("RAYLIGHT_UPDATE_GOLDEN"):
        golden.write_text(rendered)
    assert golden.exists(), f"no golden file {golden}: run with RAYLIGHT_UPDATE_GOLDEN=1"
    assert rendered == golden.read_text(), f"{name}: RayJob differs from {golden} (RAYLIGHT_UPDATE_GOLDEN=1)"


def with_mlflow_secret(resource: Resource) -> Resource:
    doc = resource.model_dump(mode="json", by_alias=True, exclude_none=True)
    doc["spec"]["mlflow"]["secretRef"] = {"name": "mlflow-credentials"}
    return parse_resource(doc)


def test_gpu_sweep_asks_for_gpus_where_they_are() -> None:
    assert "envFrom" not in yaml.dump(build_rayjob(example("cifar-sweep-gpu.yaml"), SETTINGS))  # no Secret asked for
    rayjob = build_rayjob(with_mlflow_secret(example("cifar-sweep-gpu.yaml")), SETTINGS)
    spec = rayjob["spec"]
    workers = spec["rayClusterSpec"]["workerGroupSpecs"][0]
    container = workers["template"]["spec"]["containers"][0]
    # maxConcurrentTrials x 1 one-GPU worker: one pod of 4 GPUs (up to 8 by default) holds them
    assert workers["replicas"] == 1
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert container["resources"]["limits"]["cpu"] == "24"
    assert container["resources"]["limits"]["memory"] == "128Gi"
    assert workers["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert container["envFrom"] == [{"secretRef": {"name": "mlflow-credentials"}}]
    head = spec["rayClusterSpec"]["headGroupSpec"]
    head_limits = head["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in head_limits and head["rayStartParams"]["num-cpus"] == "0"
    assert rayjob["metadata"]["ownerReferences"][0]["uid"] == UID
    assert "--storage-path /results" in spec["entrypoint"]


def test_trainer_gets_the_resource_with_operator_defaults() -> None:
    resource = example("cluster-quickstart.yaml")
    head = build_rayjob(resource, SETTINGS)["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    manifest = yaml.safe_load(head["metadata"]["annotations"][MANIFEST_ANNOTATION])
    volume = next(v for v in head["spec"]["volumes"] if "downwardAPI" in v)
    assert volume["downwardAPI"]["items"] == [
        {"path": "manifest.yaml", "fieldRef": {"fieldPath": f"metadata.annotations['{MANIFEST_ANNOTATION}']"}}]
    assert manifest["spec"]["mlflow"]["trackingUri"] == "http://mlflow.mlflow:5000"
    assert manifest["metadata"]["uid"] == UID
    reparsed = parse_resource(manifest)
    assert reparsed.spec.model_dump(exclude={"mlflow"}) == resource.spec.model_dump(exclude={"mlflow"})


def test_fractional_gpus_pack_trials_into_a_pod() -> None:
    resource = parse_resource(with_identity({
        "apiVersion": "raylight.dev/v1alpha1", "kind": "TuneSweep", "metadata": {"name": "frac"},
        "spec": {"trial": {"resources": {"gpusPerWorker": 0.25, "cpusPerWorker": 2}},
                 "numSamples": 16, "maxConcurrentTrials": 8},
    }))
    shape = worker_shape(resource)
    assert (shape.replicas, shape.cpus, shape.gpus) == (1, 16, 2)  # 8 trials, 4 to a GPU, in one pod
    resource.spec.cluster.workers.gpus_per_pod = 1  # nodes with one GPU each
    shape = worker_shape(resource)
    assert (shape.replicas, shape.cpus, shape.gpus) == (2, 8, 1)


def gpu_run(kind: str, resources: dict[str, Any], **spec: Any) -> Any:
    body: dict[str, Any] = {"resources": resources} if kind == "TrainingJob" else {"trial": {"resources": resources}}
    return parse_resource(with_identity({"apiVersion": "raylight.dev/v1alpha1", "kind": kind,
                                         "metadata": {"name": "gpus"}, "spec": {**body, **spec}}))


@pytest.mark.parametrize(("kind", "resources", "spec", "expected"), [
    # a 16-rank DDP job: two 8-GPU pods, each holding a node's ranks
    ("TrainingJob", {"workers": 16, "gpusPerWorker": 1, "cpusPerWorker": 4}, {}, (2, 32, 8)),
    # never more than the run needs: a 2-rank job gets one 2-GPU pod
    ("TrainingJob", {"workers": 2, "gpusPerWorker": 1}, {}, (1, 2, 2)),
    # gpusPerPod bounds the pod: 4-GPU nodes
    ("TrainingJob", {"workers": 16, "gpusPerWorker": 1}, {"cluster": {"workers": {"gpusPerPod": 4}}}, (4, 4, 4)),
    # whole workers only: 3-GPU workers, two to an 8-GPU pod (6 GPUs)
    ("TrainingJob", {"workers": 4, "gpusPerWorker": 3}, {}, (2, 2, 6)),
    # fractions: 0.4 puts 2 trials on a GPU (never one across two); 5 trials need 3 GPUs
    ("TuneSweep", {"gpusPerWorker": 0.4}, {"maxConcurrentTrials": 5, "numSamples": 5}, (1, 5, 3)),
    # data-parallel trials: 4 trials x 2 ranks in one 8-GPU pod
    ("TuneSweep", {"workers": 2, "gpusPerWorker": 1}, {"maxConcurrentTrials": 4, "numSamples": 8}, (1, 8, 8)),
])
def test_gpu_workers_share_pods_of_up_to_gpus_per_pod(kind: str, resources: dict[str, Any], spec: dict[str, Any],
                                                      expected: tuple[int, float, int]) -> None:
    shape = worker_shape(gpu_run(kind, resources, **spec))
    assert (shape.replicas, shape.cpus, shape.gpus) == expected


def test_gpus_per_pod_that_cannot_work_names_the_field() -> None:
    with pytest.raises(BuildError) as too_small:
        worker_shape(gpu_run("TrainingJob", {"workers": 2, "gpusPerWorker": 2},
                             cluster={"workers": {"gpusPerPod": 1}}))
    assert too_small.value.path == "spec.cluster.workers.gpusPerPod" and "at least 2" in too_small.value.message
    with pytest.raises(BuildError) as cpu_only:
        worker_shape(gpu_run("TrainingJob", {"workers": 2}, cluster={"workers": {"gpusPerPod": 8}}))
    assert cpu_only.value.path == "spec.cluster.workers.gpusPerPod" and "no GPU" in cpu_only.value.message


def test_cpu_workers_get_a_pod_each() -> None:
    rayjob = build_rayjob(example("cluster-quickstart.yaml"), SETTINGS)
    workers = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] == 2  # maxConcurrentTrials one-worker trials
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "500m"


def test_names_are_deterministic_and_fit_kuberay() -> None:
    long = "a" * 50
    assert rayjob_name("TuneSweep", "x") == "ts-x"
    assert rayjob_name("TuneSweep", long) == rayjob_name("TuneSweep", long)
    assert len(rayjob_name("TuneSweep", long)) <= MAX_RAYJOB_NAME
    assert rayjob_name("TuneSweep", long) != rayjob_name("TuneSweep", long[:-1] + "b")
    assert rayjob_name("TuneSweep", "9lives")[0].isalpha()  # KubeRay wants a DNS-1035 label


def test_missing_tracking_uri_names_the_field() -> None:
    resource = example("cluster-quickstart.yaml")
    with pytest.raises(BuildError) as info:
        build_rayjob(resource, OperatorSettings())
    assert info.value.path == "spec.mlflow.trackingUri"


def test_a_queued_rayjob_is_made_suspended() -> None:
    """Kueue unsuspends it on admission (tests/integration/test_kueue.py: the reconciler then leaves
    the field to Kueue)."""
    queued = example("kueue-sweep.yaml")
    assert build_rayjob(queued, SETTINGS)["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert build_rayjob(queued, SETTINGS)["spec"]["suspend"] is True
    suspended = queued.model_copy(update={"spec": queued.spec.model_copy(update={"suspend": True})})
    assert build_rayjob(suspended, SETTINGS)["spec"]["suspend"] is True
    assert build_rayjob(example("cluster-quickstart.yaml"), SETTINGS)["spec"]["suspend"] is False


def test_suspend_is_the_same_run() -> None:
    resource = example("cluster-quickstart.yaml")
    suspended = resource.model_copy(update={"spec": resource.spec.model_copy(update={"suspend": True})})
    assert run_hash(suspended) == run_hash(resource)
    assert build_rayjob(suspended, SETTINGS)["spec"]["suspend"] is True
    changed = resource.model_copy(update={"spec": resource.spec.model_copy(update={"num_samples": 3})})
    assert run_hash(changed) != run_hash(resource)


def test_every_cluster_example_builds() -> None:
    for file in CLUSTER_MANIFESTS:
        for resource in load_manifests(file):
            resource = parse_resource(with_identity(resource.model_dump(by_alias=True, exclude_none=True)))
            assert build_rayjob(resource, SETTINGS)["kind"] == "RayJob"


def _with_cluster(cluster: dict[str, Any]) -> Any:
    doc = yaml.safe_load((REPO / "examples" / "cluster-quickstart.yaml").read_text())
    doc["spec"]["cluster"] = cluster
    return parse_resource(with_identity(doc))


@pytest.mark.parametrize("name", sorted(LOCAL_ONLY))
def test_a_local_example_is_refused_on_a_cluster_for_its_storage(name: str) -> None:
    with pytest.raises(BuildError) as info:
        build_rayjob(example(name), SETTINGS)
    assert info.value.path == "spec.cluster.storagePath"
    for choice in ("ReadWriteMany", "cluster-quickstart.yaml", "s3://", "cluster-quickstart-s3.yaml"):
        assert choice in info.value.message


PVC = {"name": "results", "persistentVolumeClaim": {"claimName": "shared"}}


@pytest.mark.parametrize(("cluster", "expected"), [
    ({"storagePath": "/tmp/raylight"}, "is not on a volume"),
    ({"storagePath": "/data/results", "volumes": [PVC], "volumeMounts": [{"name": "results", "mountPath": "/dat"}]},
     "is not on a volume"),
    ({"storagePath": "/scratch/ckpt", "volumes": [{"name": "scratch", "emptyDir": {}}],
      "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}, "'scratch' (emptyDir)"),
    ({"storagePath": "/results", "volumes": [{"name": "results", "hostPath": {"path": "/mnt"}}],
      "volumeMounts": [{"name": "results", "mountPath": "/results"}]}, "(hostPath)"),
    ({"storagePath": "/results", "volumes": [PVC],
      "volumeMounts": [{"name": "results", "mountPath": "/results", "readOnly": True}]}, "read-only"),
    ({"storagePath": "results", "volumes": [PVC], "volumeMounts": [{"name": "results", "mountPath": "/results"}]},
     "absolute path"),
])
def test_storage_a_pod_keeps_to_itself_is_refused(cluster: dict[str, Any], expected: str) -> None:
    with pytest.raises(BuildError) as info:
        build_rayjob(_with_cluster(cluster), SETTINGS)
    assert info.value.path == "spec.cluster.storagePath" and expected in info.value.message


def test_storage_under_the_innermost_shared_mount_is_accepted() -> None:
    cluster = {"storagePath": "/mnt/shared/ckpt", "volumes": [{"name": "scratch", "emptyDir": {}}, PVC],
               "volumeMounts": [{"name": "scratch", "mountPath": "/mnt"},
                                {"name": "results", "mountPath": "/mnt/shared/"}]}
    entrypoint = build_rayjob(_with_cluster(cluster), SETTINGS)["spec"]["entrypoint"]
    assert "--storage-path /mnt/shared/ckpt" in entrypoint


@pytest.mark.parametrize(("path", "expected"), [
    ("hdfs://namenode/results", "hdfs:// is not a store"), ("s3:///results", "names no bucket"),
])
def test_an_object_store_that_cannot_work_is_refused(path: str, expected: str) -> None:
    with pytest.raises(BuildError) as info:
        build_rayjob(_with_cluster({"storagePath": path}), SETTINGS)
    assert info.value.path == "spec.cluster.storagePath" and expected in info.value.message


def test_an_object_store_needs_no_volume_and_its_secret_reaches_every_ray_pod() -> None:
    doc = yaml.safe_load((REPO / "examples" / "storage" / "cluster-quickstart-s3.yaml").read_text())
    doc["spec"]["cluster"]["dataCache"] = {"size": "20Gi"}
    doc["spec"]["mlflow"]["secretRef"] = {"name": "mlflow-auth"}
    rayjob = build_rayjob(parse_resource(with_identity(doc)), SETTINGS)
    assert "--storage-path s3://raylight/results" in rayjob["spec"]["entrypoint"]
    cluster = rayjob["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"], cluster["workerGroupSpecs"][0]["template"]]
    for pod in pods:
        container = pod["spec"]["containers"][0]
        assert container["envFrom"] == [{"secretRef": {"name": "raylight-s3"}}, {"secretRef": {"name": "mlflow-auth"}}]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["RAYLIGHT_STORAGE_SECRET"] == "raylight-s3", "named in the trainer's storage errors"
        assert env["RAYLIGHT_RUN_BY_OPERATOR"] == "true", "errors name spec fields, not raylight run's options"
        # Datasets read from the store are copied once per pod, into a volume of the size asked for.
        assert env["RAYLIGHT_DATA_CACHE_SIZE"] == "20Gi"
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == env["RAYLIGHT_DATA_CACHE"])
        volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
        assert volume["emptyDir"] == {"sizeLimit": "20Gi"}


def test_defaults_are_not_part_of_a_run_identity() -> None:
    """What the API server stores carries every default; a release that adds a defaulted field
    must find the same run (or it would re-run finished ones and block running ones)."""
    resource = example("cluster-quickstart.yaml")
    doc = resource.model_dump(mode="json", by_alias=True)  # every default written out, as stored
    assert doc["spec"]["trial"]["callbacks"]["lrMonitor"]["interval"] == "epoch"
    stored = parse_resource(doc)
    assert run_hash(stored) == run_hash(resource)
    del doc["spec"]["trial"]["callbacks"]  # as an object written before that field existed
    assert run_hash(parse_resource(doc)) == run_hash(resource)


def test_wandb_credentials_reach_every_pod_from_their_secret() -> None:
    resource = with_mlflow_secret(example("cifar-sweep-gpu.yaml"))
    doc = resource.model_dump(mode="json", by_alias=True, exclude_none=True)
    doc["spec"]["tracking"] = {"wandb": {"project": "cifar", "mode": "online", "secretRef": {"name": "wandb-key"}}}
    rayjob = build_rayjob(parse_resource(doc), SETTINGS)
    cluster = rayjob["spec"]["rayClusterSpec"]
    for template in (cluster["headGroupSpec"]["template"], cluster["workerGroupSpecs"][0]["template"]):
        assert template["spec"]["containers"][0]["envFrom"] == [
            {"secretRef": {"name": "mlflow-credentials"}}, {"secretRef": {"name": "wandb-key"}}]
    doc["spec"]["tracking"]["wandb"]["secretRef"] = {"name": "mlflow-credentials"}  # one Secret for both
    rayjob = build_rayjob(parse_resource(doc), SETTINGS)
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["envFrom"] == [{"secretRef": {"name": "mlflow-credentials"}}]


def _quickstart_with(cluster: dict[str, Any]) -> Any:
    """The cluster quickstart with these fields of spec.cluster set."""
    doc = yaml.safe_load((REPO / "examples" / "cluster-quickstart.yaml").read_text())
    doc["spec"]["cluster"].update(cluster)
    return parse_resource(with_identity(doc))


def _pod_templates(rayjob: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = rayjob["spec"]
    cluster = spec["rayClusterSpec"]
    return {"head": cluster["headGroupSpec"]["template"], "worker": cluster["workerGroupSpecs"][0]["template"],
            "submitter": spec["submitterPodTemplate"]}


@pytest.mark.parametrize("name", [p.name for p in CLUSTER_MANIFESTS])
def test_every_ray_pod_is_restricted_by_default(name: str) -> None:
    """Pod Security "restricted" (the API server's own check runs in
    tests/integration/test_pod_security.py): a numeric non-root user, no privilege escalation, no
    capabilities, the runtime's seccomp profile, on every container of every role."""
    for role, template in _pod_templates(build_rayjob(example(name), SETTINGS)).items():
        pod = template["spec"]
        assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1000,
                                          "seccompProfile": {"type": "RuntimeDefault"}}, role
        for container in pod["containers"]:
            assert container["securityContext"] == {"allowPrivilegeEscalation": False,
                                                    "capabilities": {"drop": ["ALL"]}}, (role, container["name"])


def test_security_contexts_keep_the_defaults_a_spec_leaves_out_and_pull_secrets_reach_every_pod() -> None:
    rayjob = build_rayjob(_quickstart_with({
        "podSecurityContext": {"runAsUser": 2000, "fsGroup": 100, "fsGroupChangePolicy": "OnRootMismatch"},
        "containerSecurityContext": {"readOnlyRootFilesystem": True, "capabilities": {"add": ["NET_BIND_SERVICE"]}},
        "imagePullSecrets": [{"name": "registry"}, {"name": "mirror"}],
    }), SETTINGS)
    for role, template in _pod_templates(rayjob).items():
        pod = template["spec"]
        assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 2000, "fsGroup": 100,
                                          "fsGroupChangePolicy": "OnRootMismatch",
                                          "seccompProfile": {"type": "RuntimeDefault"}}, role
        assert pod["imagePullSecrets"] == [{"name": "registry"}, {"name": "mirror"}], role
        assert pod["containers"][0]["securityContext"] == {
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}}, role


@pytest.mark.parametrize(("cluster", "path"), [
    ({"podSecurityContext": {"runAsUser": -1}}, "spec.cluster.podSecurityContext.runAsUser"),
    ({"podSecurityContext": {"seccompProfile": {"type": "Localhost"}}},
     "spec.cluster.podSecurityContext.seccompProfile.localhostProfile"),
    ({"containerSecurityContext": {"capabilities": {"drop": "ALL"}}},
     "spec.cluster.containerSecurityContext.capabilities.drop"),
    ({"containerSecurityContext": {"runAsNonRoot": True}}, "spec.cluster.containerSecurityContext.runAsNonRoot"),
    ({"imagePullSecrets": ["registry"]}, "spec.cluster.imagePullSecrets[0]"),
])
def test_a_wrong_security_field_is_refused_naming_it(cluster: dict[str, Any], path: str) -> None:
    with pytest.raises(ManifestError) as info:
        _quickstart_with(cluster)
    assert path in str(info.value), str(info.value)
