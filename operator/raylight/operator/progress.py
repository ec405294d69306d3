"""Live progress read back from MLflow, the system of record, over its REST API.

The operator stays small: plain HTTP, no mlflow import. The trainer tags the run of a
TrainingJob and the parent run of a TuneSweep with the resource's uid (raylight.uid); once
found, that one run is read by its id. A sweep's driver keeps its progress on it (the api's
SweepProgress, tag raylight.progress), so no trial run is ever searched.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from raylight.api import SweepProgress, TrainingJob, TuneSweep
from raylight.api.manifest import Resource
from raylight.api.tags import TAG_ERROR, TAG_INTERRUPTED, TAG_MODEL_URI, TAG_PARENT_RUN_ID, TAG_PROGRESS, TAG_UID

_TIMEOUT_S = 10
_MAX_PAUSE_S = 60.0
log = logging.getLogger("raylight.operator")
_requests = 0
_requests_lock = threading.Lock()


def requests_made() -> int:
    """MLflow requests this process made (the metric raylight_mlflow_requests_total)."""
    return _requests
_MAX_TRIAL_RUNS = 1000


class ProgressError(RuntimeError):
    """MLflow could not be read (down, unreachable, or refusing the operator's credentials)."""


class MlflowReader:
    def __init__(self, tracking_uri: str, timeout: float = _TIMEOUT_S, authorization: str | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        """`authorization` and `ssl_context` reach MLflow through the API server's service proxy
        (the CLI's way in from outside the cluster); by default the MLflow client's variables."""
        self.base = tracking_uri.rstrip("/")
        self.timeout, self.ssl_context = timeout, ssl_context
        self.headers = {"Content-Type": "application/json"}
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
        if authorization:
            self.headers["Authorization"] = authorization
        elif token:
            self.headers["Authorization"] = f"Bearer {token}"
        elif user and password:
            self.headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None,
              query: dict[str, str] | None = None, api: str = "mlflow") -> dict[str, Any]:
        answer = self._request(method, f"{api}/{path}", body, query)
        if answer is None:
            return {}
        try:
            found = json.loads(answer or b"{}")
        except ValueError:
            found = None
        if not isinstance(found, dict):
            # An auth proxy's login page, a load balancer's error page: a 200 that is not MLflow.
            shown = answer[:80].decode(errors="replace").strip().replace("\n", " ")
            raise ProgressError(f"MLflow at {self.base} answered {path} with something that is not MLflow's JSON "
                                f"(a login page or a proxy in the way?): {shown!r}")
        return found

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 query: dict[str, str] | None = None) -> bytes | None:
        """The answer's bytes; None for 404."""
        url = f"{self.base}/api/2.0/{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, headers=self.headers, method=method)
        global _requests
        with _requests_lock:
            _requests += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.ssl_context) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise ProgressError(f"MLflow at {self.base} answered {exc.code} to {path}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ProgressError(f"MLflow at {self.base} cannot be reached: {exc}") from exc

    def experiment_id(self, name: str) -> str | None:
        found = self._call("GET", "experiments/get-by-name", query={"experiment_name": name})
        return (found.get("experiment") or {}).get("experiment_id")

    def end_run(self, run_id: str, status: str, end_time_ms: int) -> None:
        self._call("POST", "runs/update", {"run_id": run_id, "status": status, "end_time": end_time_ms})

    def run(self, run_id: str) -> dict[str, Any] | None:
        found = self._call("GET", "runs/get", query={"run_id": run_id})
        return found.get("run")

    def get(self, path: str, query: dict[str, str] | None = None) -> dict[str, Any]:
        """GET on MLflow's REST API ({} for 404)."""
        return self._call("GET", path, query=query)

    def artifact_files(self, path: str) -> list[dict[str, Any]]:
        """Files and folders under a path of the server's artifact store (mlflow-artifacts:/PATH)."""
        return list(self._call("GET", "artifacts", query={"path": path}, api="mlflow-artifacts").get("files", []))

    def artifact(self, path: str) -> bytes:
        answer = self.artifact_if_any(path)
        if answer is None:
            raise ProgressError(f"MLflow at {self.base} has no artifact {path}")
        return answer

    def artifact_if_any(self, path: str) -> bytes | None:
        """A file of the server's artifact store; None when it has none there."""
        return self._request("GET", f"mlflow-artifacts/artifacts/{urllib.parse.quote(path)}")

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


def run_tags(run: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in (run.get("data") or {}).get("tags", [])}


def run_metrics(run: dict[str, Any]) -> dict[str, float]:
    return {m["key"]: float(m["value"]) for m in (run.get("data") or {}).get("metrics", [])}


def read_progress(resource: Resource, tracking_uri: str, known: dict[str, Any] | None = None,
                  timeout: float = _TIMEOUT_S) -> dict[str, Any]:
    """Status fields that show the run's progress: {} until the trainer has created its run.

    `known` is the status' mlflow reference: once the run is found, it is read by its id (one
    request) instead of searched for (two)."""
    reader = MlflowReader(tracking_uri, timeout)
    spec, meta = resource.spec, resource.metadata
    run: dict[str, Any] | None = None
    experiment_id = (known or {}).get("experimentId")
    if known and known.get("runId") and known.get("trackingUri") == tracking_uri:
        run = reader.run(str(known["runId"]))
    if run is None:
        experiment_id = reader.experiment_id(spec.mlflow.experiment or meta.name)
        if experiment_id is None:
            return {}
        runs = reader.search(experiment_id, f"tags.`{TAG_UID}` = '{meta.uid}'", 1)
        if not runs:
            return {}
        run = runs[0]
    run_id = run["info"]["run_id"]
    experiment_id = experiment_id or run["info"].get("experiment_id")
    status: dict[str, Any] = {"mlflow": {"trackingUri": tracking_uri, "experimentId": experiment_id, "runId": run_id}}
    tags = run_tags(run)
    if tags.get(TAG_MODEL_URI):
        status["mlflow"]["modelUri"] = tags[TAG_MODEL_URI]
    error_lines = [line.strip() for line in tags.get(TAG_ERROR, "").splitlines() if line.strip()]
    if error_lines:
        status["rootCause"] = error_lines[-1][:1024]  # the exception's own line, within the schema's bound
    elif tags.get(TAG_INTERRUPTED):
        status["rootCause"] = interrupted_cause(tags[TAG_INTERRUPTED])
    metric = spec.objective.metric
    if isinstance(resource, TrainingJob):
        metrics = run_metrics(run)
        if "epoch" in metrics:
            status["epoch"] = int(metrics["epoch"])
        if metric in metrics and math.isfinite(metrics[metric]):
            status["metric"] = metrics[metric]
        return status
    assert isinstance(resource, TuneSweep)
    # The driver keeps the sweep's progress on this one run (api SweepProgress): no trial search.
    try:
        progress = SweepProgress.model_validate_json(tags.get(TAG_PROGRESS) or "")
    except ValidationError:
        return status  # not written yet (or by a trainer older than the contract)
    counts = progress.trials
    status.update(trials=counts.wire(),
                  progress=f"{counts.succeeded + counts.stopped_early + counts.failed}/{counts.total}")
    if progress.best_trial is not None:
        status["bestTrial"] = progress.best_trial.wire()
    return status


def interrupted_cause(signal_name: str) -> str:
    """Why a run that a signal stopped ended (shown if its RayJob then failed): on a cluster, its
    Ray pods were stopped while it ran, a deleted head pod or a drained node."""
    return (f"interrupted by {signal_name}: its Ray pods were stopped (a deleted head pod, a drained node); its "
            "checkpoints are kept, and with spec.cluster.backoffLimit >= 1 KubeRay starts it again on a new Ray "
            "cluster, which resumes it")


@dataclass(frozen=True)
class ProgressTarget:
    """What to read for one resource: its current run (by spec hash) and where it reports."""

    resource: Resource
    tracking_uri: str
    run_hash: str
    known: dict[str, Any] | None
    """The status' mlflow reference, once the run was found."""
    final: bool = False
    """The run ended: read it once more, then stop."""


@dataclass(frozen=True)
class ProgressState:
    run_hash: str
    fields: dict[str, Any] | None
    """Status fields from the last successful read (None: never read)."""
    error: str | None
    """Why the last read failed (None: it did not)."""


class ProgressPoller:
    """Reads each active run's progress from MLflow off the reconcile path and enqueues on change.

    Reads run on a few threads of their own with a short timeout, so a slow or stopped MLflow
    never holds a reconcile. A tracking URI that fails is left alone for a growing pause (up to
    a minute, or the interval if longer) instead of being asked once per resource per interval."""

    def __init__(self, interval: float, on_change: Callable[[Hashable], None], threads: int = 4,
                 timeout: float = 5.0) -> None:
        self.interval, self.timeout = interval, timeout
        self._on_change = on_change
        self._lock = threading.Lock()
        self._targets: dict[Hashable, ProgressTarget] = {}
        self._states: dict[Hashable, ProgressState] = {}
        self._due: dict[Hashable, float] = {}
        self._in_flight: set[Hashable] = set()
        self._down_until: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._said: dict[str, str] = {}  # tracking URI -> the kind of failure last logged
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="progress")
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def track(self, key: Hashable, target: ProgressTarget | None) -> None:
        """Keep reading this resource's progress (None: stop). A changed target is read at once."""
        with self._lock:
            previous = self._targets.get(key)
            if target is None:
                self._targets.pop(key, None)
                self._states.pop(key, None)
                self._due.pop(key, None)
                return
            self._targets[key] = target
            changed = previous is None or (previous.run_hash, previous.final) != (target.run_hash, target.final)
            if changed:
                self._due[key] = 0.0
        if changed:
            self._wake.set()

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._targets.pop(key, None)
            self._states.pop(key, None)
            self._due.pop(key, None)

    def state(self, key: Hashable) -> ProgressState | None:
        with self._lock:
            return self._states.get(key)

    def _loop(self) -> None:
        while not self._stopped:
            now = time.monotonic()
            with self._lock:
                ready = [key for key, due in self._due.items() if due <= now and key not in self._in_flight
                         and self._down_until.get(self._targets[key].tracking_uri, 0.0) <= now]
                for key in ready:
                    self._in_flight.add(key)
                    self._due[key] = now + self.interval
                pending = [d for k, d in self._due.items() if k not in self._in_flight]
                next_due = min(pending, default=now + self.interval)
            for key in ready:
                self._pool.submit(self._read, key)
            self._wake.wait(timeout=max(0.05, min(self.interval, next_due - now)))
            self._wake.clear()

    def _read(self, key: Hashable) -> None:
        with self._lock:
            target = self._targets.get(key)
        try:
            if target is None:
                return
            try:
                fields: dict[str, Any] | None = read_progress(target.resource, target.tracking_uri, target.known,
                                                              self.timeout)
                error = None
            except ProgressError as exc:
                fields, error = None, str(exc)
            except Exception as exc:  # an answer we did not expect: said like an outage, never lost in the pool
                log.exception("reading the progress of %s from MLflow failed", key)
                fields, error = None, f"MLflow at {target.tracking_uri}: {type(exc).__name__}: {exc}"
            self._record(key, target, fields, error)
        finally:
            with self._lock:
                self._in_flight.discard(key)

    def _record(self, key: Hashable, target: ProgressTarget, fields: dict[str, Any] | None,
                error: str | None) -> None:
        uri = target.tracking_uri
        changed: list[Hashable] = []
        with self._lock:
            if self._targets.get(key) != target:
                return  # the resource moved on while this read ran
            if error is None:
                if self._failures.pop(uri, None):
                    log.info("MLflow at %s answers again", uri)
                self._down_until.pop(uri, None)
                self._said.pop(uri, None)
                affected = [key]
            else:
                now = time.monotonic()
                # Reads that were in flight together fail together: one failure, not one per read.
                if self._down_until.get(uri, 0.0) <= now:
                    failures = self._failures[uri] = self._failures.get(uri, 0) + 1
                    # One probe per server per pause (the other resources wait for it): the pause
                    # only bounds how late the status catches up once it is back.
                    pause = min(max(self.interval, _MAX_PAUSE_S), self.interval * 2 ** (failures - 1))
                    self._down_until[uri] = now + pause
                kind = _kind_of(error, uri)
                if self._said.get(uri) != kind:
                    self._said[uri] = kind  # each new kind of failure once, not every probe
                    log.warning("progress cannot be read: %s", error)
                # Every resource on this server is as unreachable as this one: say so on all of them.
                affected = [k for k, t in self._targets.items() if t.tracking_uri == uri]
            for each in affected:
                each_target = self._targets[each]
                previous = self._states.get(each)
                kept = previous.fields if previous and previous.run_hash == each_target.run_hash else None
                state = ProgressState(each_target.run_hash, fields if each == key and fields is not None else kept,
                                      error)
                if state != previous:
                    self._states[each] = state
                    changed.append(each)
            if target.final and error is None:
                self._targets.pop(key, None)  # the ended run was read once more: done
                self._due.pop(key, None)
        for each in changed:
            self._on_change(each)


def _kind_of(error: str, uri: str) -> str:
    """A failure's message without what changes from one probe to the next (the details after its
    first ": ", numbers): "cannot be reached", "answered N to runs/get", ..."""
    return re.sub(r"\d+", "N", error.replace(uri, "").split(": ")[0])


def end_runs(body: dict[str, Any], settings: Any) -> None:
    """A resource deleted mid-run: its MLflow run (and a sweep's unfinished trial runs) end KILLED.

    Its driver dies with the RayJob and would leave them RUNNING forever. Best effort: MLflow
    may be down, and the resource is gone either way."""
    status = body.get("status") or {}
    ref = status.get("mlflow") or {}
    if status.get("phase") in ("Succeeded", "Failed") or not ref.get("runId") or not ref.get("trackingUri"):
        return
    reader = MlflowReader(str(ref["trackingUri"]))
    end_time = int(time.time() * 1000)
    try:
        runs = [str(ref["runId"])]
        if body.get("kind") == "TuneSweep" and ref.get("experimentId"):
            children = reader.search(str(ref["experimentId"]), f"tags.`{TAG_PARENT_RUN_ID}` = '{ref['runId']}' "
                                     "and attributes.status = 'RUNNING'", _MAX_TRIAL_RUNS)
            runs += [child["info"]["run_id"] for child in children]
        for run_id in runs:
            reader.end_run(run_id, "KILLED", end_time)
    except Exception as exc:  # runs in a pool whose futures nobody reads: every failure is logged here
        log.warning("the MLflow runs of deleted %s %s stay as they are: %s", body.get("kind"),
                    body["metadata"].get("name"), exc)
