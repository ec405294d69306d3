"""The Kubernetes operator: TrainingJob and TuneSweep reconciled into KubeRay RayJobs.

Pure builders (builder.py, conditions.py) and thin kopf handlers (handlers.py). This package
imports neither torch nor ray: the operator stays small and starts fast.
"""
