"""Pure builders: a TrainingJob or TuneSweep in, the KubeRay RayJob that runs it out.

No I/O here; the handlers apply what these return (server-side apply, one field manager).
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import yaml

from raylight.api import API_VERSION, TuneSweep
from raylight.api.cluster import OBJECT_STORE_SCHEMES
from raylight.api.manifest import Resource

from .ray_pods import (
    LABEL_KIND,
    LABEL_NAME,
    MANIFEST_ANNOTATION,
    MANIFEST_DIR,
    MANIFEST_FILE,
    MANIFEST_VOLUME,
    RunPods,
    head_template,
    submitter_template,
    worker_template,
)

__all__ = ["LABEL_KIND", "LABEL_NAME", "MANIFEST_ANNOTATION", "MANIFEST_VOLUME", "BuildError", "OperatorSettings",
           "build_rayjob", "rayjob_name", "run_hash", "worker_shape"]

# The Ray version of the trainer image (pyproject pins ray to it): KubeRay needs it to shape pods.
RAY_VERSION = "2.60.0"
# The trainer image is tagged with Raylight's version (the chart's appVersion), not Ray's: an
# upgrade of Raylight is a new tag, which nodes pull even with imagePullPolicy IfNotPresent.
RAYLIGHT_VERSION = "0.1.0"
DEFAULT_TRAINER_IMAGE = f"ghcr.io/raylight-dev/raylight-trainer:{RAYLIGHT_VERSION}"
FIELD_MANAGER = "raylight-operator"
MANAGED_BY = "raylight-operator"

# Labels (and annotations) with these prefixes pass from the resource to its RayJob, so that
# e.g. Kueue admits the RayJob (kueue.x-k8s.io/queue-name). Other labels stay on the resource:
# a GitOps tool's tracking label copied to the RayJob would make the tool prune it.
PASSTHROUGH_PREFIXES = ("kueue.x-k8s.io/",)
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

# The run a RayJob belongs to (see run_hash): a spec change after it finished replaces the RayJob.
RUN_HASH_ANNOTATION = "raylight.dev/run-hash"

# The trainer's manifest travels in the RayJob itself, as an annotation on the head pod's template
# that a downward API volume shows as a file (ray_pods.head_template): one object to apply per run
# (a ConfigMap beside it doubled the writes of a burst of new runs), nothing to keep in step.
# KubeRay names RayClusters after their RayJob plus a suffix; it refuses longer RayJob names.
MAX_RAYJOB_NAME = 47
_KIND_PREFIX = {"TrainingJob": "tj", "TuneSweep": "ts"}


@dataclass(frozen=True)
class OperatorSettings:
    """What the operator adds to every resource (set by its flags / the Helm chart)."""

    trainer_image: str = DEFAULT_TRAINER_IMAGE
    mlflow_tracking_uri: str | None = None


class BuildError(ValueError):
    """A spec that cannot become a RayJob under these settings: (field path, message)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def rayjob_name(kind: str, name: str) -> str:
    """Deterministic RayJob name: a restart or a replayed event finds the same object.

    Starts with a letter (KubeRay wants a DNS-1035 label) and stays within KubeRay's limit;
    a long name is cut and made unique again with a hash of the whole name."""
    full = f"{_KIND_PREFIX[kind]}-{name}"
    if len(full) <= MAX_RAYJOB_NAME:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    return f"{full[: MAX_RAYJOB_NAME - 9].rstrip('-')}-{digest}"


def run_hash(resource: Resource) -> str:
    """Identity of a run: the spec without `suspend` (suspending and resuming is the same run).

    Fields left at their defaults are not part of it, so an operator upgrade that adds a field
    neither re-runs finished runs nor blocks running ones."""
    spec = resource.spec.model_dump(mode="json", exclude={"suspend"}, exclude_defaults=True)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def tracking_uri(resource: Resource, settings: OperatorSettings) -> str:
    uri = resource.spec.mlflow.tracking_uri or settings.mlflow_tracking_uri
    if not uri:
        raise BuildError(
            "spec.mlflow.trackingUri",
            "no MLflow tracking URI: set it here, or give the operator one (--mlflow-tracking-uri, "
            "or the Helm value mlflow.trackingUri)",
        )
    return uri


def owner_reference(resource: Resource) -> dict[str, Any]:
    if not resource.metadata.uid:
        raise BuildError("metadata.uid", "the resource has no uid yet (it must come from the API server)")
    return {
        "apiVersion": API_VERSION,
        "kind": resource.kind,
        "name": resource.metadata.name,
        "uid": resource.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def kueue_queue(resource: Resource) -> str | None:
    """The Kueue LocalQueue that admits the resource's RayJob (its queue-name label), if any."""
    return _metadata_map(resource, "labels").get(QUEUE_LABEL)


def labels(resource: Resource) -> dict[str, str]:
    own = {
        "app.kubernetes.io/name": "raylight",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_KIND: resource.kind,
        LABEL_NAME: resource.metadata.name,
    }
    return {**_passthrough(_metadata_map(resource, "labels")), **own}


def _metadata_map(resource: Resource, key: str) -> dict[str, str]:
    value = getattr(resource.metadata, "model_extra", None) or {}
    return dict(value.get(key) or {})


def _passthrough(values: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in values.items() if k.startswith(PASSTHROUGH_PREFIXES)}


def trainer_manifest(resource: Resource, settings: OperatorSettings) -> dict[str, Any]:
    """The manifest the trainer runs: the resource itself, with the operator's defaults filled in."""
    spec = resource.spec.model_copy(deep=True)
    spec.mlflow.tracking_uri = tracking_uri(resource, settings)
    return {
        "apiVersion": API_VERSION,
        "kind": resource.kind,
        "metadata": {
            "name": resource.metadata.name,
            "namespace": resource.metadata.namespace,
            "uid": resource.metadata.uid,
        },
        "spec": spec.wire(),
    }


# libyaml's emitter where PyYAML has it (the same text, ~3x faster: a burst of new resources
# builds one manifest each).
_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _yaml(document: dict[str, Any]) -> str:
    return yaml.dump(document, Dumper=_DUMPER, sort_keys=False)


@dataclass(frozen=True)
class WorkerShape:
    """Each of `replicas` worker pods holds `workers` training workers, `cpus` and `gpus`."""

    replicas: int
    workers: int
    cpus: float
    gpus: int


WORKER_MEMORY_GI = 16  # a worker pod's default memory, for each training worker it holds
# GPUs of a typical GPU node (8x A100/H100 and the like): worker pods take up to this many by default.
DEFAULT_GPUS_PER_POD = 8


def worker_shape(resource: Resource) -> WorkerShape:
    """Worker pods for the run. A CPU worker gets a pod of its own. GPU workers share pods of up to
    gpusPerPod GPUs (and never more than the run needs): the DDP ranks of a node in one pod, or
    trials packed on fractions of its GPUs. A sweep gets room for maxConcurrentTrials runs at once."""
    if isinstance(resource, TuneSweep):
        trial, concurrent = resource.spec.trial, resource.spec.max_concurrent_trials or 1
    else:
        trial, concurrent = resource.spec, 1
    per_worker, workers = trial.resources, resource.spec.cluster.workers
    at_once = per_worker.workers * concurrent  # training workers running at the same time
    gpus = per_worker.gpus_per_worker
    if gpus == 0:
        if workers.gpus_per_pod is not None:
            raise BuildError("spec.cluster.workers.gpusPerPod", "the workers use no GPU: remove gpusPerPod, or give "
                             "the trial's resources gpusPerWorker")
        per_pod, pod_gpus = 1, 0
    else:
        per_pod, pod_gpus = _gpu_pod(gpus, at_once, workers.gpus_per_pod)
    replicas = workers.replicas or math.ceil(at_once / per_pod)
    return WorkerShape(replicas=replicas, workers=per_pod, cpus=per_worker.cpus_per_worker * per_pod,
                       gpus=pod_gpus)


def _gpu_pod(gpus_per_worker: float, at_once: int, gpus_per_pod: int | None) -> tuple[int, int]:
    """(training workers, GPUs) of one GPU worker pod."""
    if gpus_per_worker < 1:  # whole workers on each GPU: 0.3 fits 3 on a GPU, never one across two
        per_gpu = math.floor(1 / gpus_per_worker)
        pod_gpus = min(gpus_per_pod or DEFAULT_GPUS_PER_POD, math.ceil(at_once / per_gpu))
        per_pod = min(pod_gpus * per_gpu, at_once)
        return per_pod, math.ceil(per_pod / per_gpu)
    whole = int(gpus_per_worker)
    if gpus_per_pod is not None and gpus_per_pod < whole:
        raise BuildError("spec.cluster.workers.gpusPerPod", f"{gpus_per_pod} GPU(s) cannot hold one worker of "
                         f"gpusPerWorker {whole}: raise gpusPerPod to at least {whole}")
    per_pod = min((gpus_per_pod or max(DEFAULT_GPUS_PER_POD, whole)) // whole, at_once)
    return per_pod, per_pod * whole


def _quantity(cpus: float) -> str:
    return str(int(cpus)) if cpus == int(cpus) else f"{round(cpus * 1000)}m"


# Volume sources that several pods, on several nodes, can mount at once and write to. Anything
# else (emptyDir, hostPath, a ConfigMap) is each pod's or node's own copy.
SHARED_VOLUME_SOURCES = ("persistentVolumeClaim", "nfs", "cephfs", "glusterfs", "azureFile", "csi")
_STORAGE_HELP = ("set storagePath to an object store, s3://BUCKET/PREFIX with storageSecret, or mount a "
                 "ReadWriteMany volume (a PersistentVolumeClaim or NFS, in spec.cluster.volumes and volumeMounts) "
                 "and set storagePath to a directory on it; see examples/cluster-quickstart.yaml (a volume) and "
                 "examples/storage/cluster-quickstart-s3.yaml (an object store)")


def shared_storage_path(resource: Resource) -> str:
    """spec.cluster.storagePath, checked to be on storage every pod of the Ray cluster shares.

    Ray Train writes a marker there from the head and checks it from each worker before their
    first checkpoint, and the head reads the best checkpoint back: a pod-local path fails the run
    at its first checkpoint, on the pods, long after the resource was accepted."""
    cluster = resource.spec.cluster
    path = cluster.storage_path
    if path is None:
        raise BuildError("spec.cluster.storagePath",
                         f"required on a cluster (checkpoints and sweep state): {_STORAGE_HELP}")
    if "://" in path:
        uri = urlparse(path)
        if uri.scheme not in OBJECT_STORE_SCHEMES:
            raise BuildError("spec.cluster.storagePath", f"{path!r}: {uri.scheme}:// is not a store Raylight "
                             f"reads; {_STORAGE_HELP}")
        if not uri.netloc:
            raise BuildError("spec.cluster.storagePath", f"{path!r} names no bucket: write {uri.scheme}://BUCKET/PREFIX")
        return path  # every pod reaches the store itself
    if not path.startswith("/"):
        raise BuildError("spec.cluster.storagePath", f"{path!r} must be an absolute path in the pods; {_STORAGE_HELP}")

    def covers(mount_path: str) -> bool:
        root = mount_path.rstrip("/") or "/"
        return path == root or path.startswith(root.rstrip("/") + "/")

    mounts = sorted((m for m in cluster.volume_mounts if covers(m.mount_path)), key=lambda m: len(m.mount_path))
    if not mounts:
        raise BuildError("spec.cluster.storagePath",
                         f"{path} is not on a volume, so each pod of the Ray cluster (the head and every worker) "
                         f"would keep its own copy and the run fails at its first checkpoint: {_STORAGE_HELP}")
    mount = mounts[-1]  # the innermost mount holds the path
    volume = next(v for v in cluster.volumes if v.get("name") == mount.name)
    source = next((key for key in volume if key != "name"), "no source")
    if source not in SHARED_VOLUME_SOURCES:
        raise BuildError("spec.cluster.storagePath",
                         f"{path} is on volume {mount.name!r} ({source}), which each pod or node has its own copy of: "
                         f"{_STORAGE_HELP}")
    if mount.read_only:
        raise BuildError("spec.cluster.storagePath",
                         f"{path} is on volume {mount.name!r}, mounted read-only: checkpoints need it writable")
    return path


def worker_resources(resource: Resource, shape: WorkerShape) -> dict[str, str]:
    cluster = resource.spec.cluster
    memory = cluster.workers.memory or f"{WORKER_MEMORY_GI * shape.workers}Gi"
    resources = {"cpu": _quantity(shape.cpus), "memory": memory}
    if shape.gpus:
        resources[cluster.workers.gpu_resource] = str(shape.gpus)
    return resources


def build_rayjob(resource: Resource, settings: OperatorSettings) -> dict[str, Any]:
    """The KubeRay RayJob (ray.io/v1) that runs a TrainingJob or TuneSweep."""
    spec, cluster, meta = resource.spec, resource.spec.cluster, resource.metadata
    tracking_uri(resource, settings)  # fail before building anything when there is none
    storage_path = shared_storage_path(resource)
    shape = worker_shape(resource)
    pods = RunPods(resource, cluster.image or settings.trainer_image)
    # A sweep some of whose trials failed still succeeded (its status counts them): the RayJob
    # fails only when the run does.
    entrypoint = shlex.join([
        "python", "-m", "raylight_trainer", f"{MANIFEST_DIR}/{MANIFEST_FILE}", "--output", "json",
        "--data-dir", cluster.data_dir, "--storage-path", storage_path, "--allow-failed-trials",
    ])
    rayjob_spec: dict[str, Any] = {
        "entrypoint": entrypoint,
        "submissionMode": "K8sJobMode",
        "submitterPodTemplate": submitter_template(pods, entrypoint),
        # KubeRay only suspends a RayJob that tears its cluster down when it finishes.
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": cluster.ttl_seconds_after_finished,
        "backoffLimit": cluster.backoff_limit,
        "rayClusterSpec": {
            "rayVersion": RAY_VERSION,
            "headGroupSpec": {
                # The head runs the driver only: no training lands on it (it has no GPU).
                "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                "template": head_template(pods, _yaml(trainer_manifest(resource, settings))),
            },
            "workerGroupSpecs": [
                {
                    "groupName": "workers",
                    "replicas": shape.replicas,
                    "minReplicas": shape.replicas,
                    "maxReplicas": shape.replicas,
                    "rayStartParams": {},
                    "template": worker_template(pods, worker_resources(resource, shape)),
                }
            ],
        },
    }
    if cluster.active_deadline_seconds:
        rayjob_spec["activeDeadlineSeconds"] = cluster.active_deadline_seconds
    # A queued RayJob is made suspended, and Kueue unsuspends it on admission (the reconciler then
    # leaves the field to Kueue: see kueue_queue and Reconciler._leave_suspend_to_kueue).
    rayjob_spec["suspend"] = spec.suspend or kueue_queue(resource) is not None
    metadata: dict[str, Any] = {
        "name": rayjob_name(resource.kind, meta.name),
        "namespace": meta.namespace,
        "labels": labels(resource),
        "ownerReferences": [owner_reference(resource)],
    }
    metadata["annotations"] = {**_passthrough(_metadata_map(resource, "annotations")),
                               RUN_HASH_ANNOTATION: run_hash(resource)}
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": metadata, "spec": rayjob_spec}
