"""What the operator's Ray pods and the trainer inside them agree on, besides the manifest."""

# The head container's driver writes its PID to the file this variable names, so that the pod's
# preStop hook can interrupt it the way Ctrl-C interrupts `raylight run`.
DRIVER_PID_FILE_ENV = "RAYLIGHT_DRIVER_PID_FILE"
DRIVER_PID_FILE = "/tmp/raylight/driver.pid"
# `python -m POD_STOP_MODULE {driver,workers} --within SECONDS`: the Ray pods' preStop hook.
POD_STOP_MODULE = "raylight_trainer.pod_stop"
# Seconds of a pod's grace period kept for Ray's own shutdown after the hook returns.
RAY_SHUTDOWN_SECONDS = 5
