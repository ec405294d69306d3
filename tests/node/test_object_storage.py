"""Object storage in real pods: an S3-compatible store runs as a pod of the cluster (versitygw, the
image of tests/objectstore/build), and the README's object-store example keeps its checkpoints and
Tune's state there and reads its dataset and the weights its trials start from (issue 28: timm's
ViT weights made here with timm's random init, saved as safetensors) from there; wrong keys fail the
run at once, naming the URI and the Secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.unit.test_data import write_cifar10

from .conftest import REPO, Node, Release, mlflow_client, wait_for

ACCESS_KEY, SECRET_KEY, PORT = "raylight-node", "raylight-node-secret", 7070
EXAMPLE = REPO / "examples" / "storage" / "cluster-quickstart-s3.yaml"


def deploy_store(node: Node, namespace: str) -> str:
    """The store as a pod and a Service named s3; its endpoint as this host reaches it (the ClusterIP)."""
    cluster = node.cluster
    labels = {"app": "s3"}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "s3", "labels": labels},
           "spec": {"containers": [{
               "name": "versitygw", "image": node.env["RAYLIGHT_OBJECTSTORE_IMAGE"],
               "args": ["--port", f":{PORT}", "--access", ACCESS_KEY, "--secret", SECRET_KEY, "posix", "/buckets"],
               "ports": [{"containerPort": PORT}],
               "readinessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": 1},
               "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}},
               "volumeMounts": [{"name": "buckets", "mountPath": "/buckets"}]}],
               "volumes": [{"name": "buckets", "emptyDir": {}}]}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s3"},
               "spec": {"selector": labels, "ports": [{"port": PORT, "targetPort": PORT}]}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all([pod, service]))
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Ready", "pod/s3", "--timeout=120s")
    address, port = cluster.service_address("s3", namespace)
    return f"http://{address}:{port}"


def credentials(name: str, namespace: str, secret_key: str = SECRET_KEY) -> dict[str, Any]:
    """examples/storage/s3-credentials.yaml, for the store in this namespace."""
    secret = yaml.safe_load((REPO / "examples" / "storage" / "s3-credentials.yaml").read_text())
    secret["metadata"]["name"] = name
    secret["stringData"].update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=secret_key,
                                AWS_ENDPOINT_URL=f"http://s3.{namespace}.svc:{PORT}")
    return secret


def store_filesystem(endpoint: str) -> Any:
    from pyarrow.fs import S3FileSystem

    return S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, endpoint_override=endpoint,
                        region="us-east-1", allow_bucket_creation=True)


def test_the_object_store_example_trains_in_pods_with_its_state_and_dataset_on_the_store(
    node: Node, raylight: Release, namespace: str, tmp_path: Path
) -> None:
    from pyarrow.fs import FileSelector, LocalFileSystem, copy_files

    cluster = node.cluster
    endpoint = deploy_store(node, namespace)
    store = store_filesystem(endpoint)
    store.create_dir("raylight")
    write_cifar10(tmp_path / "cifar", per_batch=60)
    copy_files(str(tmp_path / "cifar"), "raylight/datasets/cifar", source_filesystem=LocalFileSystem(),
               destination_filesystem=store)
    copy_files(str(pretrained_weights(tmp_path)), "raylight/weights/vit-nano.safetensors",
               source_filesystem=LocalFileSystem(), destination_filesystem=store)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(credentials("raylight-s3", namespace)))
    sweep = yaml.safe_load(EXAMPLE.read_text())  # the example, smaller, on a CIFAR-format dataset in the store
    spec = sweep["spec"]
    spec.update(numSamples=3, maxConcurrentTrials=2)
    # Every trial fine-tunes from the weights on the store (one depth: the weights have one).
    spec["trial"]["model"].update(depth=3, pretrained="s3://raylight/weights/vit-nano.safetensors")
    spec["searchSpace"].pop("model.depth")
    spec["trial"]["training"]["maxEpochs"] = 3
    spec["trial"]["data"] = {"dataset": "cifar10", "path": "cifar"}
    spec["cluster"]["dataDir"] = "s3://raylight/datasets"
    spec["mlflow"] = {"experiment": f"s3-{namespace}", "registeredModelName": f"s3-{namespace}"}
    name = sweep["metadata"]["name"]
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(sweep))
    waited = cluster.kubectl("wait", "-n", namespace, "--for=condition=Succeeded", "--timeout=1200s",
                             f"tunesweep/{name}", check=False)
    status = (cluster.get("tunesweep", name, namespace) or {}).get("status") or {}
    assert waited.returncode == 0, f"{waited.stdout}{waited.stderr}\nstatus: {status}"
    assert status["trials"]["total"] == 3 and status["trials"]["failed"] == 0
    # Checkpoints, Tune's state and the resume file are objects in the bucket, under the resource.
    kept = [info.path for info in store.get_file_info(FileSelector(f"raylight/results/{namespace}/{name}",
                                                                   recursive=True))]
    assert any(path.endswith("raylight-state.json") for path in kept), kept
    assert any("experiment_state" in path for path in kept), kept
    assert any(path.endswith("checkpoint.ckpt") for path in kept), kept
    client = mlflow_client(raylight)
    assert client.get_run(status["mlflow"]["runId"]).info.status == "FINISHED"
    assert client.search_model_versions(f"name = 's3-{namespace}'"), "the best checkpoint, read back, was registered"
    trials = client.search_runs([client.get_run(status["mlflow"]["runId"]).info.experiment_id],
                                f"tags.`mlflow.parentRunId` = '{status['mlflow']['runId']}'")
    assert len(trials) == 3, [t.info.run_id for t in trials]
    for trial in trials:
        loaded = trial.data.params["pretrained.loaded"]
        assert loaded == ("started from s3://raylight/weights/vit-nano.safetensors: 44 tensors, classifier "
                          "re-initialised for 10 classes (the checkpoint's has 1000); position embeddings "
                          "resampled from (1, 65, 64) to (1, 17, 64)"), loaded


def pretrained_weights(directory: Path) -> Path:
    """timm's ViT of the example's sizes at depth 3 (32 px, 1000 classes), as a user would download it."""
    import torch
    from safetensors.torch import save_file
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    network = VisionTransformer(img_size=32, patch_size=4, embed_dim=64, depth=3, num_heads=4, mlp_ratio=2.0,
                                num_classes=1000)
    save_file(network.state_dict(), str(directory / "vit-nano.safetensors"))
    return directory / "vit-nano.safetensors"


def test_keys_the_store_refuses_fail_the_run_naming_the_uri_and_the_secret(
    node: Node, raylight: Release, namespace: str
) -> None:
    cluster = node.cluster
    endpoint = deploy_store(node, namespace)
    store_filesystem(endpoint).create_dir("raylight")
    cluster.kubectl("apply", "-n", namespace, "-f", "-",
                    input=yaml.safe_dump(credentials("wrong-keys", namespace, secret_key="not-the-secret")))
    job = {"apiVersion": "raylight.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "refused"},
           "spec": {"model": {"preset": "vit-nano", "depth": 1}, "training": {"maxEpochs": 1},
                    "resources": {"workers": 1, "cpusPerWorker": 0.5},
                    "cluster": {"head": {"cpu": "500m", "memory": "3Gi"}, "workers": {"memory": "2Gi"},
                                "storagePath": "s3://raylight/results", "storageSecret": {"name": "wrong-keys"}}}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(job))

    def failed() -> dict[str, Any] | None:
        status = (cluster.get("trainingjob", "refused", namespace) or {}).get("status") or {}
        return status if status.get("phase") == "Failed" else None

    status = wait_for(failed, timeout=600, interval=2, what="the TrainingJob to fail")
    cause = status.get("rootCause") or ""
    assert "spec.cluster.storagePath: " in cause and "s3://raylight/results" in cause, status
    assert "access denied" in cause, status
    assert "the Secret 'wrong-keys' (spec.cluster.storageSecret)" in cause, status
