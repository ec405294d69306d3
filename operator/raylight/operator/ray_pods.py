"""The pods of a run's Ray cluster, one function per role (head, workers, KubeRay's submitter), as
KubeRay's common/pod.go builds its own: each gets its security context, pull secrets, volumes and
environment from one place (`RunPods`), so a setting added there reaches every container.

Pure: dicts in, dicts out; builder.build_rayjob assembles them into the RayJob."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from raylight.api.manifest import Resource
from raylight.api.pods import (
    DATA_CACHE_ENV,
    DATA_CACHE_SIZE_ENV,
    DRIVER_PID_FILE,
    DRIVER_PID_FILE_ENV,
    POD_STOP_MODULE,
    RAY_SHUTDOWN_SECONDS,
    RUN_BY_OPERATOR_ENV,
    STORAGE_SECRET_ENV,
)

LABEL_KIND = "raylight.dev/kind"
LABEL_NAME = "raylight.dev/name"
LABEL_ROLE = "raylight.dev/role"
# Each Ray pod's copy of the datasets it reads from object storage (spec.cluster.dataCache).
DATA_CACHE_VOLUME = "raylight-data-cache"
DATA_CACHE_DIR = "/var/cache/raylight/datasets"
# The trainer's manifest reaches the head as a file, from an annotation on the head pod's template
# (see builder.py: one object per run).
MANIFEST_DIR = "/etc/raylight"
MANIFEST_FILE = "manifest.yaml"
MANIFEST_VOLUME = "raylight-manifest"
MANIFEST_ANNOTATION = "raylight.dev/manifest"


@dataclass(frozen=True)
class RunPods:
    """What every Ray pod of one run shares, read once from its spec."""

    resource: Resource
    image: str

    @property
    def cluster(self) -> Any:
        return self.resource.spec.cluster

    def labels(self, role: str) -> dict[str, str]:
        return {LABEL_KIND: self.resource.kind, LABEL_NAME: self.resource.metadata.name, LABEL_ROLE: role}

    def env_from(self) -> list[dict[str, Any]]:
        """The Secrets whose keys every Ray container gets as its environment, once each, in order."""
        spec = self.resource.spec
        refs = [self.cluster.storage_secret, spec.mlflow.secret_ref,
                spec.tracking.wandb.secret_ref if spec.tracking.wandb else None]
        names = dict.fromkeys(ref.name for ref in refs if ref is not None)
        return [{"secretRef": {"name": name}} for name in names]

    def env(self) -> list[dict[str, str]]:
        cluster = self.cluster
        env = [{"name": RUN_BY_OPERATOR_ENV, "value": "true"}, {"name": DATA_CACHE_ENV, "value": DATA_CACHE_DIR},
               {"name": DATA_CACHE_SIZE_ENV, "value": cluster.data_cache.size}]
        if cluster.storage_secret is not None:
            env.append({"name": STORAGE_SECRET_ENV, "value": cluster.storage_secret.name})
        return env

    def volumes(self) -> list[dict[str, Any]]:
        cache: dict[str, Any] = {"sizeLimit": self.cluster.data_cache.size}
        if self.cluster.data_cache.medium:
            cache["medium"] = self.cluster.data_cache.medium
        return [*self.cluster.volumes, {"name": DATA_CACHE_VOLUME, "emptyDir": cache}]

    def mounts(self) -> list[dict[str, Any]]:
        cache = {"name": DATA_CACHE_VOLUME, "mountPath": DATA_CACHE_DIR}
        return [*(m.wire() for m in self.cluster.volume_mounts), cache]

    def container(self, name: str, resources: dict[str, Any]) -> dict[str, Any]:
        """A container of the run's image, with the run's security context and pull policy."""
        body: dict[str, Any] = {
            "name": name,
            "image": self.image,
            "resources": resources,
            "securityContext": _without_empty(self.cluster.container_security_context.wire()),
            # A crashing container's last log lines land in its status, where the operator
            # reads them to explain the failure (no log access needed).
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }
        if self.cluster.image_pull_policy:
            body["imagePullPolicy"] = self.cluster.image_pull_policy
        return body

    def ray_container(self, role: str, resources: dict[str, str]) -> dict[str, Any]:
        """The head's or a worker's Ray container: the run's environment, Secrets and volumes."""
        body = self.container(f"ray-{role}", {"requests": resources, "limits": resources})
        body.update(volumeMounts=self.mounts(), env=self.env())
        if env_from := self.env_from():
            body["envFrom"] = env_from
        return body

    def pod(self, role: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
        """A pod template: the run's security context, pull secrets, ServiceAccount and priority."""
        cluster = self.cluster
        pod_spec: dict[str, Any] = {"containers": containers, **spec,
                                    "securityContext": _without_empty(cluster.pod_security_context.wire())}
        if cluster.image_pull_secrets:
            pod_spec["imagePullSecrets"] = [ref.wire() for ref in cluster.image_pull_secrets]
        if cluster.priority_class_name:
            pod_spec["priorityClassName"] = cluster.priority_class_name
        if cluster.service_account_name:
            pod_spec["serviceAccountName"] = cluster.service_account_name
        return {"metadata": {"labels": self.labels(role)}, "spec": pod_spec}


def _without_empty(value: dict[str, Any]) -> dict[str, Any]:
    """A Kubernetes object without its empty lists and maps (`capabilities.add: []`): what the spec
    left unset is not written into the pods."""
    result = {}
    for key, item in value.items():
        if isinstance(item, dict):
            item = _without_empty(item)
        if item != [] and item != {}:
            result[key] = item
    return result


def stopping_gracefully(container: dict[str, Any], role: str, grace_seconds: int) -> dict[str, Any]:
    """A Ray container whose pod, when Kubernetes stops it, lets the run stop as Ctrl-C stops it
    (raylight_trainer.runtime.pod_stop): `ray start` itself kills its pod's Ray processes on SIGTERM.
    role "driver" (the head) stops the driver; "workers" wait until it has."""
    within = str(grace_seconds - RAY_SHUTDOWN_SECONDS)
    hook = {"preStop": {"exec": {"command": ["python", "-m", POD_STOP_MODULE, role, "--within", within]}}}
    if role == "driver":
        container["env"] = [
            *container.get("env", []),
            {"name": DRIVER_PID_FILE_ENV, "value": DRIVER_PID_FILE},
            # How KubeRay stops the job when the RayJob is deleted: as long as the hook would wait.
            {"name": "RAY_JOB_STOP_WAIT_TIME_S", "value": within},
        ]
    return {**container, "lifecycle": hook}


def head_template(pods: RunPods, manifest_text: str) -> dict[str, Any]:
    """The head runs the driver only (no training lands on it: it has no GPU), with the trainer's
    manifest as a file."""
    cluster = pods.cluster
    grace = cluster.termination_grace_period_seconds
    container = pods.ray_container("head", {"cpu": cluster.head.cpu, "memory": cluster.head.memory})
    container["volumeMounts"].insert(0, {"name": MANIFEST_VOLUME, "mountPath": MANIFEST_DIR, "readOnly": True})
    manifest_volume = {"name": MANIFEST_VOLUME, "downwardAPI": {"items": [
        {"path": MANIFEST_FILE, "fieldRef": {"fieldPath": f"metadata.annotations['{MANIFEST_ANNOTATION}']"}}]}}
    template = pods.pod("head", [stopping_gracefully(container, "driver", grace)],
                        volumes=[manifest_volume, *pods.volumes()], terminationGracePeriodSeconds=grace)
    template["metadata"]["annotations"] = {MANIFEST_ANNOTATION: manifest_text}
    return template


def worker_template(pods: RunPods, resources: dict[str, str]) -> dict[str, Any]:
    """A worker pod: the training workers it holds, placed where the spec says (GPU nodes).
    NCCL between the GPUs of a pod needs more /dev/shm than a container's 64 MiB: KubeRay mounts a
    memory-backed one, as large as the container's memory, in every Ray pod."""
    cluster = pods.cluster
    grace = cluster.termination_grace_period_seconds
    placement: dict[str, Any] = {}
    if cluster.node_selector:
        placement["nodeSelector"] = dict(cluster.node_selector)
    if cluster.tolerations:
        placement["tolerations"] = [t.wire() for t in cluster.tolerations]
    if cluster.affinity:
        placement["affinity"] = cluster.affinity
    container = stopping_gracefully(pods.ray_container("worker", resources), "workers", grace)
    return pods.pod("worker", [container], volumes=pods.volumes(), **placement, terminationGracePeriodSeconds=grace)


def submitter_template(pods: RunPods, entrypoint: str) -> dict[str, Any]:
    """KubeRay's submitter Job's pod: it submits the Ray job and follows the driver's log.
    KubeRay's default reserves half a CPU for that, which a small node then lacks for the workers.

    Its command is the trainer image's submitter, not KubeRay's `ray job submit` + `ray job logs
    --follow`: KubeRay fails a running job 30 s after that command ends, and the log stream can end
    while the job runs (raylight_trainer.runtime.submitter says when)."""
    container = pods.container("ray-job-submitter", {"requests": {"cpu": "100m", "memory": "256Mi"},
                                                     "limits": {"memory": "1Gi"}})
    container["command"] = ["python", "-m", "raylight_trainer.runtime.submitter", "--entrypoint", entrypoint]
    template = pods.pod("submitter", [container], restartPolicy="Never")
    # It needs no ServiceAccount of the run's and no priority of its own: what it always had.
    for key in ("serviceAccountName", "priorityClassName"):
        template["spec"].pop(key, None)
    return template
