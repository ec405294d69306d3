"""Entry point of the trainer image: `python -m raylight_trainer MANIFEST [raylight run options]`.

Inside a RayJob it joins the cluster (RAY_ADDRESS); elsewhere it starts a local Ray, exactly
as `raylight run` does, so what runs on the cluster is what a user ran on the laptop.
"""

from __future__ import annotations

import sys

from raylight.cli import main

from .run_logs import kept_driver_output

if __name__ == "__main__":
    # The driver's output is the pod's log; kept in MLflow too, it outlives the pod.
    with kept_driver_output():
        code = main(["run", *sys.argv[1:]])
    sys.exit(code)
