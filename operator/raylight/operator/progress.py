"""Live progress read back from MLflow, the system of record, over its REST API.

The operator stays small: plain HTTP, no mlflow import. The trainer tags the run of a
TrainingJob and the parent run of a TuneSweep with the resource's uid (raylight.uid); trial
runs are that parent's children and carry their final state in raylight.state.
"""

from __future__ import annotations

import base64
import json
import math
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from raylight.api import TrainingJob, TuneSweep
from raylight.api.manifest import Resource
from raylight.api.tags import TAG_BEST_TRIAL_ID, TAG_PARENT_RUN_ID, TAG_STATE, TAG_TRIAL_ID, TAG_UID

_TIMEOUT_S = 10
_MAX_TRIAL_RUNS = 1000


class ProgressError(RuntimeError):
    """MLflow could not be read (down, unreachable, or refusing the operator's credentials)."""


class MlflowReader:
    def __init__(self, tracking_uri: str) -> None:
        self.base = tracking_uri.rstrip("/")
        self.headers = {"Content-Type": "application/json"}
        # The same variables the MLflow client reads.
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        elif user and password:
            self.headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None,
              query: dict[str, str] | None = None) -> dict[str, Any]:
        url = f"{self.base}/api/2.0/mlflow/{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, headers=self.headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
                return dict(json.loads(response.read() or b"{}"))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return {}
            raise ProgressError(f"MLflow at {self.base} answered {exc.code} to {path}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ProgressError(f"MLflow at {self.base} cannot be reached: {exc}") from exc

    def experiment_id(self, name: str) -> str | None:
        found = self._call("GET", "experiments/get-by-name", query={"experiment_name": name})
        return (found.get("experiment") or {}).get("experiment_id")

    def search(self, experiment_id: str, filter_: str, max_results: int) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = []
        token = None
        while len(runs) < max_results:
            body: dict[str, Any] = {
                "experiment_ids": [experiment_id], "filter": filter_,
                "max_results": min(1000, max_results - len(runs)), "order_by": ["attributes.start_time DESC"],
            }
            if token:
                body["page_token"] = token
            page = self._call("POST", "runs/search", body)
            runs.extend(page.get("runs", []))
            token = page.get("next_page_token")
            if not token:
                break
        return runs


def _tags(run: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in (run.get("data") or {}).get("tags", [])}


def _metrics(run: dict[str, Any]) -> dict[str, float]:
    return {m["key"]: float(m["value"]) for m in (run.get("data") or {}).get("metrics", [])}


def _params(run: dict[str, Any]) -> dict[str, str]:
    return {p["key"]: p["value"] for p in (run.get("data") or {}).get("params", [])}


def _better(a: float, b: float, mode: str) -> bool:
    return a > b if mode == "max" else a < b


def _sampled_config(params: dict[str, str]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for key, value in params.items():
        if key.startswith("sampled."):
            try:
                config[key.removeprefix("sampled.")] = json.loads(value)
            except ValueError:
                config[key.removeprefix("sampled.")] = value
    return config


def read_progress(resource: Resource, tracking_uri: str) -> dict[str, Any]:
    """Status fields that show the run's progress: {} until the trainer has created its run."""
    reader = MlflowReader(tracking_uri)
    spec, meta = resource.spec, resource.metadata
    experiment_id = reader.experiment_id(spec.mlflow.experiment or meta.name)
    if experiment_id is None:
        return {}
    identity = f"tags.`{TAG_UID}` = '{meta.uid}'"
    runs = reader.search(experiment_id, identity, 1)
    if not runs:
        return {}
    run = runs[0]
    run_id = run["info"]["run_id"]
    status: dict[str, Any] = {"mlflow": {"trackingUri": tracking_uri, "experimentId": experiment_id, "runId": run_id}}
    metric = spec.objective.metric
    if isinstance(resource, TrainingJob):
        metrics = _metrics(run)
        if "epoch" in metrics:
            status["epoch"] = int(metrics["epoch"])
        if metric in metrics and math.isfinite(metrics[metric]):
            status["metric"] = metrics[metric]
        return status
    assert isinstance(resource, TuneSweep)
    sweep = resource.spec
    children = reader.search(experiment_id, f"tags.`{TAG_PARENT_RUN_ID}` = '{run_id}'", _MAX_TRIAL_RUNS)
    counts = {"total": sweep.num_samples, "pending": 0, "running": 0, "succeeded": 0, "stoppedEarly": 0, "failed": 0}
    best: dict[str, Any] | None = None
    for child in children:
        state = _tags(child).get(TAG_STATE)
        if state == "stopped_early":
            counts["stoppedEarly"] += 1
        elif state in ("succeeded", "failed"):
            counts[state] += 1
        else:
            counts["running"] += 1
        value = _metrics(child).get(metric)
        improves = best is None or _better(value or 0.0, best["metric"], spec.objective.mode)
        if value is not None and math.isfinite(value) and improves:
            best = {
                "id": _tags(child).get(TAG_TRIAL_ID, child["info"]["run_id"]),
                "metric": value,
                "config": _sampled_config(_params(child)),
            }
    # A finished sweep names its best trial; that is the answer (it may have peaked before its last epoch).
    final_id, final_metric = _tags(run).get(TAG_BEST_TRIAL_ID), _metrics(run).get(f"best_{metric}")
    chosen = next((c for c in children if _tags(c).get(TAG_TRIAL_ID) == final_id), None)
    if chosen is not None and final_metric is not None:
        best = {"id": final_id, "metric": final_metric, "config": _sampled_config(_params(chosen))}
    counts["pending"] = max(0, sweep.num_samples - len(children))
    done = counts["succeeded"] + counts["stoppedEarly"] + counts["failed"]
    status.update(trials=counts, progress=f"{done}/{sweep.num_samples}")
    if best is not None:
        status["bestTrial"] = best
    return status
