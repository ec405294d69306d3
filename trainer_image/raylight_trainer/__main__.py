"""Entry point of the trainer image: `python -m raylight_trainer MANIFEST [raylight run options]`.

Inside a RayJob it joins the cluster (RAY_ADDRESS); elsewhere it starts a local Ray, exactly
as `raylight run` does, so what runs on the cluster is what a user ran on the laptop.
"""

from __future__ import annotations

import sys

from .driver import exit_quickly, main
from .runtime.pod_stop import write_driver_pid
from .tracking.logs import kept_driver_output

if __name__ == "__main__":
    # In the head pod, the pod's preStop hook finds the driver by this file to stop it gracefully.
    pid_file = write_driver_pid()
    # The driver's output is the pod's log; kept in MLflow too, it outlives the pod.
    with kept_driver_output():
        code = main(sys.argv[1:])
    if pid_file is not None:
        pid_file.unlink(missing_ok=True)
    exit_quickly(code)
