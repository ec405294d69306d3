"""Where a run executes and how it ends, for every other room (imports nothing of theirs):

- `storage`: a run's state on a directory or an object store (`Storage`, credentials, errors).
- `interrupt`: Ctrl-C and SIGTERM stopping a run where it can resume; a second signal at once.
- `pod_stop`: the Ray pods' preStop hook (`python -m raylight_trainer.runtime.pod_stop`).
- `placement`: in a RayJob's cluster or on this machine; which spec field or option says so.
- `errors`: the errors a run reports as a message (`DatasetError`, `StorageError`).
- `timeline`, `timeline_hooks`: stage timestamps for bench/trial_overhead.py.
- `procfs`: /proc/PID/stat read safely.

The rooms' `__init__`s name their modules and import none of them: the `raylight` CLI builds its
parser from `raylight_trainer.driver` without loading torch, Ray or MLflow.
"""
