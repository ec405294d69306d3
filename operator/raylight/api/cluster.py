"""How a run's Ray cluster is laid out on Kubernetes (the operator reads it; `raylight run` ignores it)."""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, field_validator, model_validator

from .base import FieldProblem, SpecModel

# Kubernetes resource quantities (e.g. 500m, 2, 1.5, 8Gi, 512Mi).
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
QUANTITY_PATTERN = _QUANTITY.pattern


# The object stores a storagePath or data.path may name: the operator accepts them, the trainer reads them.
OBJECT_STORE_SCHEMES = ("s3", "gs")


def is_object_store(uri: str) -> bool:
    return urlparse(uri).scheme in OBJECT_STORE_SCHEMES


_SUFFIX_FACTORS = {"": 1, "m": 0.001, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
                   "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity_value(value: str) -> float:
    """A Kubernetes quantity (500m, 8Gi, 500M; 1e9 is not one) as a number."""
    match = _QUANTITY.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500Mi, 8Gi)")
    number = value[: len(value) - len(match.group(2) or "")]
    return float(number) * _SUFFIX_FACTORS[match.group(2) or ""]


def quantity_bytes(value: str) -> int:
    """A Kubernetes quantity (8Gi, 500M, 1e9 is not one) as a whole number."""
    return int(quantity_value(value))


def _check_quantity(value: str | None) -> str | None:
    if value is not None and not _QUANTITY.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 8Gi)")
    return value


class Toleration(SpecModel):
    """A pod toleration (as in a Pod spec)."""

    key: str | None = Field(default=None, max_length=316)
    """Taint key to tolerate (empty with operator Exists: every taint)."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Equal matches key and value; Exists matches the key whatever its value."""
    value: str | None = Field(default=None, max_length=63)
    """Taint value for operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to tolerate (unset: all effects)."""
    toleration_seconds: int | None = Field(default=None, ge=0)
    """For NoExecute: how long the pod stays bound after the taint appears."""


class VolumeMount(SpecModel):
    """Where a volume from `volumes` appears in the head and worker containers."""

    name: str = Field(min_length=1, max_length=63)
    """Name of an entry in `volumes`."""
    mount_path: str = Field(min_length=1, max_length=1024)
    """Absolute path in the container (e.g. /data)."""
    read_only: bool = False
    """Mount read-only (datasets usually are)."""
    sub_path: str | None = Field(default=None, max_length=1024)
    """Mount only this sub-directory of the volume."""


class HeadSpec(SpecModel):
    """The Ray head pod: runs the sweep or job driver, no training (it asks for no GPU)."""

    cpu: str = Field(default="2", max_length=32, json_schema_extra={"pattern": QUANTITY_PATTERN})
    """CPU request and limit of the head container."""
    memory: str = Field(default="8Gi", max_length=32, json_schema_extra={"pattern": QUANTITY_PATTERN})
    """Memory request and limit of the head container."""

    _quantities = field_validator("cpu", "memory")(_check_quantity)


class WorkersSpec(SpecModel):
    """The Ray worker group: the pods that train. CPU and GPU per pod follow trial.resources."""

    replicas: int | None = Field(default=None, ge=1, le=1024)
    """Worker pods (default: enough for maxConcurrentTrials runs at once; a TrainingJob: its workers)."""
    memory: str | None = Field(default=None, max_length=32, json_schema_extra={"pattern": QUANTITY_PATTERN})
    """Memory request and limit of each worker pod, for all the training workers it holds
    (default: 16Gi for each of them)."""
    gpus_per_pod: int | None = Field(default=None, ge=1, le=16)
    """GPUs of one worker pod, at most: the pod holds the training workers that use them, so the
    ranks of one node share it (NVLink, P2P and shared memory between its GPUs; separate pods talk
    over the network). Default: 8, what a typical GPU node offers, or fewer when the run needs fewer.
    Set 1 where the nodes have one GPU each. Only for GPU workers."""
    gpu_resource: str = Field(default="nvidia.com/gpu", min_length=1, max_length=253)
    """Extended resource name of the GPUs (e.g. amd.com/gpu)."""

    _quantities = field_validator("memory")(_check_quantity)


class SecretRef(SpecModel):
    """A Secret in the resource's namespace."""

    name: str = Field(min_length=1, max_length=253)
    """Secret name."""


class DataCacheSpec(SpecModel):
    """The local copy of datasets read from object storage (data.path s3://...): an emptyDir volume
    of each Ray pod, so a pod's training workers fetch a dataset once (one pod per GPU node with
    gpusPerPod), and a resumed or retried trial in it reads the copy."""

    size: str = Field(default="50Gi", max_length=32, json_schema_extra={"pattern": QUANTITY_PATTERN})
    """The volume's sizeLimit; datasets used least recently are evicted to stay under it, and one
    larger than this fails with a message that names this field."""
    medium: Literal["", "Memory"] = ""
    """Memory: a tmpfs, counted against the pod's memory (for nodes whose disks are slow)."""

    _quantities = field_validator("size")(_check_quantity)


# The trainer image's `ray` user (Ray's images and ours): a number, because the kubelet checks
# runAsNonRoot against a numeric user only, and an image's `USER ray` is a name.
RAY_UID = 1000
_MAX_ID = 2**31 - 1


class SeccompProfile(SpecModel):
    """The seccomp profile of the containers."""

    type: Literal["RuntimeDefault", "Localhost", "Unconfined"] = "RuntimeDefault"
    """RuntimeDefault: the container runtime's own (what Pod Security "restricted" asks for)."""
    localhost_profile: str | None = Field(default=None, min_length=1, max_length=4096)
    """For type Localhost: the profile's file, relative to the kubelet's seccomp directory."""

    @model_validator(mode="after")
    def _profile_for_localhost(self) -> SeccompProfile:
        if (self.type == "Localhost") != (self.localhost_profile is not None):
            raise FieldProblem("localhostProfile", "set localhostProfile with type Localhost, and only then")
        return self


class PodSecurityContext(SpecModel):
    """The securityContext of every Ray pod (head, workers, the submitter). Each field you leave
    out keeps its default; the defaults pass Pod Security "restricted"."""

    run_as_non_root: bool = True
    """Refuse to start a container whose user is root."""
    run_as_user: int | None = Field(default=RAY_UID, ge=0, le=_MAX_ID)
    """The containers' user id (default: 1000, the trainer image's `ray` user; set your image's
    user's number if it has another)."""
    run_as_group: int | None = Field(default=None, ge=0, le=_MAX_ID)
    """The containers' primary group id (default: the image's)."""
    fs_group: int | None = Field(default=None, ge=0, le=_MAX_ID)
    """A group that owns the pod's volumes (the kubelet changes their ownership: slow on a large volume)."""
    fs_group_change_policy: Literal["OnRootMismatch", "Always"] | None = None
    """When the kubelet changes the volumes' ownership to fsGroup."""
    supplemental_groups: list[int] = Field(default_factory=list, max_length=32)
    """More group ids of the containers' processes."""
    seccomp_profile: SeccompProfile = Field(default_factory=SeccompProfile)
    """The seccomp profile of the pod's containers."""


class Capabilities(SpecModel):
    """Linux capabilities added to and dropped from the containers' default set."""

    add: list[str] = Field(default_factory=list, max_length=64)
    """Capabilities to add (Pod Security "restricted" allows NET_BIND_SERVICE only)."""
    drop: list[str] = Field(default_factory=lambda: ["ALL"], max_length=64)
    """Capabilities to drop."""


class ContainerSecurityContext(SpecModel):
    """The securityContext of every Ray container (head, workers, KubeRay's init containers that
    copy it, the submitter). Each field you leave out keeps its default; the defaults pass Pod
    Security "restricted"."""

    allow_privilege_escalation: bool = False
    """Whether a process may gain more privileges than its parent (setuid binaries)."""
    capabilities: Capabilities = Field(default_factory=Capabilities)
    """Linux capabilities (default: all dropped)."""
    privileged: bool | None = None
    """Run privileged (refused by the "baseline" and "restricted" Pod Security levels)."""
    read_only_root_filesystem: bool | None = None
    """Mount the container's root filesystem read-only (Ray writes to /tmp: mount an emptyDir there)."""
    run_as_user: int | None = Field(default=None, ge=0, le=_MAX_ID)
    """Overrides the pod's runAsUser for the containers."""
    run_as_group: int | None = Field(default=None, ge=0, le=_MAX_ID)
    """Overrides the pod's runAsGroup for the containers."""


class ClusterSpec(SpecModel):
    """The Ray cluster on Kubernetes that runs this resource (KubeRay RayJob); ignored by `raylight run`."""

    image: str | None = Field(default=None, min_length=1, max_length=512)
    """Trainer image for head and workers (default: the operator's trainer image)."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    """Pull policy of that image (default: Kubernetes' own)."""
    head: HeadSpec = Field(default_factory=HeadSpec)
    workers: WorkersSpec = Field(default_factory=WorkersSpec)
    node_selector: dict[str, str] = Field(default_factory=dict, json_schema_extra={"maxProperties": 64})
    """Node labels the worker pods must match (e.g. a GPU node pool)."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=64)
    """Taints the worker pods tolerate (GPU nodes are often tainted)."""
    affinity: dict[str, Any] | None = None
    """Pod affinity of the worker pods (a Kubernetes Affinity object)."""
    priority_class_name: str | None = Field(default=None, max_length=253)
    """PriorityClass of head and worker pods."""
    service_account_name: str | None = Field(default=None, max_length=253)
    """ServiceAccount of head and worker pods (e.g. one with cloud storage access)."""
    image_pull_secrets: list[SecretRef] = Field(default_factory=list, max_length=16)
    """Secrets of type kubernetes.io/dockerconfigjson that every Ray pod pulls its image with (a
    private registry)."""
    pod_security_context: PodSecurityContext = Field(default_factory=PodSecurityContext)
    """Security settings of every Ray pod. The defaults (non-root user 1000, the RuntimeDefault
    seccomp profile) pass the "restricted" Pod Security Standard."""
    container_security_context: ContainerSecurityContext = Field(default_factory=ContainerSecurityContext)
    """Security settings of every Ray container. The defaults (no privilege escalation, every
    capability dropped) pass the "restricted" Pod Security Standard."""
    volumes: list[dict[str, Any]] = Field(default_factory=list, max_length=64)
    """Pod volumes for head and workers (Kubernetes Volume objects, e.g. a PVC holding datasets)."""
    volume_mounts: list[VolumeMount] = Field(default_factory=list, max_length=64)
    """Where those volumes appear in the containers."""
    data_dir: str = Field(default="/data", min_length=1, max_length=1024)
    """Directory that relative data.path values are resolved against (mount your dataset volume here)."""
    storage_path: str | None = Field(default=None, min_length=1, max_length=1024)
    """Where checkpoints and sweep state go, read and written by the Ray head and every worker pod
    and outliving them (suspend, resume, retries). Required on a cluster. Either an object store,
    s3://BUCKET/PREFIX (credentials from storageSecret) or gs://BUCKET/PREFIX, or a path under the
    mountPath of a ReadWriteMany volume (a PersistentVolumeClaim, NFS, ...) in volumes/volumeMounts."""
    storage_secret: SecretRef | None = None
    """Secret whose keys become the Ray pods' environment, as the AWS SDKs read it, for an s3://
    storagePath or data.path: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL (a store
    other than AWS, e.g. one in the cluster), AWS_REGION. Not needed where serviceAccountName
    grants the access (IRSA, workload identity)."""
    data_cache: DataCacheSpec = Field(default_factory=DataCacheSpec)
    """The pods' local copy of datasets read from object storage."""
    active_deadline_seconds: int | None = Field(default=None, ge=1)
    """Fail the run after this many seconds."""
    backoff_limit: int = Field(default=0, ge=0, le=100)
    """Times KubeRay retries the whole run on a new Ray cluster (resuming from its checkpoints)."""
    termination_grace_period_seconds: int = Field(default=60, ge=10, le=3600)
    """Seconds the Ray pods have to stop when they are deleted (suspend, a deleted head pod, a
    node drain): the driver stops the run as Ctrl-C does (MLflow runs KILLED, checkpoints and the
    sweep's state kept), and a resumed run continues it. Raise it when saving the run's state takes
    longer; a worker pod deleted alone trains on for this long before Ray Train resumes elsewhere."""
    ttl_seconds_after_finished: int = Field(default=0, ge=0)
    """Seconds KubeRay keeps the finished run's Ray cluster (its pods, GPUs included) for a look at
    their logs before it deletes it. The RayJob and its submitter Job (the driver's log) stay until
    this resource is deleted."""

    @model_validator(mode="after")
    def _check_mounts(self) -> ClusterSpec:
        names = [volume.get("name") for volume in self.volumes]
        for index, volume in enumerate(self.volumes):
            if not isinstance(volume.get("name"), str) or not volume["name"]:
                raise ValueError(f"volumes[{index}] needs a name")
        for mount in self.volume_mounts:
            if mount.name not in names:
                raise ValueError(
                    f"volumeMounts names volume {mount.name!r}, which is not in volumes "
                    f"({', '.join(map(str, names)) or 'none'}): add it to volumes or fix the name"
                )
        return self
