"""What the operator's Ray pods and the trainer inside them agree on, besides the manifest."""

# The head container's driver writes its PID to the file this variable names, so that the pod's
# preStop hook can interrupt it the way Ctrl-C interrupts `raylight run`.
DRIVER_PID_FILE_ENV = "RAYLIGHT_DRIVER_PID_FILE"
DRIVER_PID_FILE = "/tmp/raylight/driver.pid"
# `python -m POD_STOP_MODULE {driver,workers} --within SECONDS`: the Ray pods' preStop hook.
POD_STOP_MODULE = "raylight_trainer.runtime.pod_stop"
# Seconds of a pod's grace period kept for Ray's own shutdown after the hook returns.
RAY_SHUTDOWN_SECONDS = 5
# Set in every Ray container the operator makes: the trainer's errors then name the spec's fields
# (spec.cluster.storagePath) rather than `raylight run`'s options (--storage-path), in every process.
RUN_BY_OPERATOR_ENV = "RAYLIGHT_RUN_BY_OPERATOR"
# The Secret the pods' object-store credentials come from (spec.cluster.storageSecret), named in the
# trainer's errors about refused credentials or missing buckets.
STORAGE_SECRET_ENV = "RAYLIGHT_STORAGE_SECRET"
# Where datasets read from object storage are copied (a directory), and how large the copies may grow
# (a Kubernetes quantity): spec.cluster.dataCache on a cluster, --data-cache/--data-cache-size locally.
DATA_CACHE_ENV = "RAYLIGHT_DATA_CACHE"
DATA_CACHE_SIZE_ENV = "RAYLIGHT_DATA_CACHE_SIZE"
