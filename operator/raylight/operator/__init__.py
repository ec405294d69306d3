"""The Kubernetes operator: TrainingJob and TuneSweep reconciled into KubeRay RayJobs.

Pure builders (builder.py) and status logic (state.py); kopf watches (handlers.py) feed a cache
(cache.py) and a work queue (workqueue.py) whose one reconcile per resource (reconciler.py) is the
only writer of status. This package imports neither torch nor ray: the operator stays small and
starts fast.
"""
