"""Entry point of the trainer image: `python -m raylight_trainer MANIFEST [raylight run options]`.

Inside a RayJob it joins the cluster (RAY_ADDRESS); elsewhere it starts a local Ray, exactly
as `raylight run` does, so what runs on the cluster is what a user ran on the laptop.
"""

from __future__ import annotations

import sys

from raylight.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
