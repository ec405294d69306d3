"""A resource's MLflow runs, read from outside the cluster: through the API server's service proxy
when the tracking URI names an in-cluster Service (the bundled server), with the kubeconfig's
credentials, so a user needs no port-forward and no MLflow credentials of their own."""

from __future__ import annotations

import socket
import ssl
import urllib.parse
from pathlib import Path
from typing import Any

from raylight.api.tags import TAG_PARENT_RUN_ID, TAG_STATE, TAG_TRIAL_ID
from raylight.operator.progress import MlflowReader, run_metrics, run_tags

# The trainer's end states (TAG_STATE) as the trial table shows them (Tune's words, as locally).
_TABLE_STATE = {"succeeded": "TERMINATED", "stopped_early": "TERMINATED", "failed": "ERROR",
                "running": "RUNNING", "pending": "PENDING"}
_MLFLOW_STATE = {"RUNNING": "running", "SCHEDULED": "pending", "FINISHED": "succeeded", "FAILED": "failed",
                 "KILLED": "failed"}


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None)
        return True
    except OSError:
        return False


def service_proxy_url(api_host: str, tracking_uri: str, namespace: str) -> str | None:
    """The API server's proxy URL of an in-cluster Service URI (NAME, NAME.NS, NAME.NS.svc...)."""
    parsed = urllib.parse.urlparse(tracking_uri)
    host = parsed.hostname or ""
    labels = host.split(".")
    in_cluster = len(labels) <= 2 or labels[2] == "svc"
    if parsed.scheme not in ("http", "https") or not in_cluster or _resolves(host):
        return None
    service, service_namespace = labels[0], labels[1] if len(labels) > 1 else namespace
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    scheme = "https:" if parsed.scheme == "https" else ""
    return (f"{api_host.rstrip('/')}/api/v1/namespaces/{service_namespace}/services/"
            f"{scheme}{service}:{port}/proxy{parsed.path.rstrip('/')}")


def _kube_tls(configuration: Any) -> ssl.SSLContext:
    """TLS to the API server as the kubeconfig says: its CA, client certificate, or no checks."""
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def reader_for(api_client: Any, tracking_uri: str, namespace: str, override: str | None = None) -> MlflowReader:
    """An MLflow reader for the URI in a resource's status (or --tracking-uri, which wins)."""
    if override:
        return MlflowReader(override)
    configuration = api_client.configuration
    proxied = service_proxy_url(configuration.host, tracking_uri, namespace)
    if proxied is None:
        return MlflowReader(tracking_uri)
    return MlflowReader(proxied, authorization=_kube_authorization(configuration),
                        ssl_context=_kube_tls(configuration))


def _kube_authorization(configuration: Any) -> str | None:
    """The Authorization header the kubeconfig's user sends (a bearer token, basic auth), if any;
    a client certificate goes in the TLS context instead."""
    for setting in configuration.auth_settings().values():
        if setting.get("in") == "header" and str(setting.get("key", "")).lower() == "authorization":
            return str(setting["value"]) if setting.get("value") else None
    return None


def _number(text: str) -> Any:
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def trial_rows(reader: MlflowReader, experiment_id: str, parent_run_id: str, metric: str) -> list[dict[str, Any]]:
    """One row per trial that has opened its MLflow run: state, epochs, objective, config, run."""
    runs = reader.search(experiment_id, f"tags.`{TAG_PARENT_RUN_ID}` = '{parent_run_id}'", 10_000)
    rows = []
    for run in runs:
        info, tags, metrics = run.get("info") or {}, run_tags(run), run_metrics(run)
        params = {p["key"]: p["value"] for p in (run.get("data") or {}).get("params", [])}
        rows.append({
            "trial": tags.get(TAG_TRIAL_ID, info.get("run_id")),
            "state": tags.get(TAG_STATE) or _MLFLOW_STATE.get(info.get("status", ""), "running"),
            "epochs": int(metrics.get("epoch", 0)),
            "metric": metrics.get(metric),
            "config": {k.removeprefix("sampled."): _number(v) for k, v in params.items() if k.startswith("sampled.")},
            "runId": info.get("run_id"),
        })
    return sorted(rows, key=lambda row: str(row["trial"]))


def table_state(state: str) -> str:
    return _TABLE_STATE.get(state, state.upper())


def model_artifact_path(reader: MlflowReader, model_uri: str) -> str:
    """Where a `models:/` URI's files are in the server's artifact store (its mlflow-artifacts path)."""
    name_version = model_uri.removeprefix("models:/")
    if "/" in name_version:  # models:/NAME/VERSION, a registered version
        name, version = name_version.rsplit("/", 1)
        found = reader.get("model-versions/get-download-uri", {"name": name, "version": version})
        location = str(found.get("artifact_uri") or "")
    else:  # models:/m-ID, a logged model
        found = reader.get(f"logged-models/{name_version}")
        location = str(((found.get("model") or {}).get("info") or {}).get("artifact_uri") or "")
    if not location:
        raise ModelError(f"MLflow knows no model {model_uri}")
    served = served_path(location)
    if served is None:
        raise ModelError(f"{model_uri} is stored at {location}, which the MLflow server does not serve: "
                         "fetch it from there")
    return served


def served_path(location: str) -> str | None:
    """The path in the server's own artifact store of an artifact URI (mlflow-artifacts:/PATH);
    None for a store the server does not serve (a bucket, a path on its disk)."""
    parsed = urllib.parse.urlparse(location)
    return parsed.path.lstrip("/") if parsed.scheme == "mlflow-artifacts" else None


class ModelError(RuntimeError):
    """The model cannot be found or fetched; the message says where it is."""


def download_model(reader: MlflowReader, model_uri: str, destination: Path) -> list[Path]:
    """Every file of the model, under `destination` as MLflow lays it out (MLmodel at the top)."""
    root = model_artifact_path(reader, model_uri)
    written: list[Path] = []
    pending = [""]
    while pending:
        relative = pending.pop()
        for entry in reader.artifact_files(f"{root}/{relative}".rstrip("/")):
            name = f"{relative}/{entry['path'].rsplit('/', 1)[-1]}".lstrip("/")
            if entry.get("is_dir"):
                pending.append(name)
                continue
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(reader.artifact(f"{root}/{name}"))
            written.append(target)
    if not written:
        raise ModelError(f"{model_uri} has no files at mlflow-artifacts:/{root}")
    return sorted(written)
