"""How the cluster commands reach a resource's MLflow from outside the cluster."""

from __future__ import annotations

from pathlib import Path

import yaml
from kubernetes import config

from raylight.cluster_mlflow import _kube_authorization, reader_for, service_proxy_url

API = "https://10.0.0.1:6443"


def test_in_cluster_service_uris_go_through_the_api_servers_proxy() -> None:
    proxy = f"{API}/api/v1/namespaces"
    assert service_proxy_url(API, "http://raylight-mlflow.raylight-system:5000", "team") == \
        f"{proxy}/raylight-system/services/raylight-mlflow:5000/proxy"
    assert service_proxy_url(API, "http://mlflow.ml.svc.cluster.local:5000/", "team") == \
        f"{proxy}/ml/services/mlflow:5000/proxy"
    assert service_proxy_url(API, "https://mlflow.ml.svc/prefix", "team") == \
        f"{proxy}/ml/services/https:mlflow:443/proxy/prefix"
    assert service_proxy_url(API, "http://mlflow", "team") == f"{proxy}/team/services/mlflow:80/proxy"
    for direct in ("http://127.0.0.1:5000", "http://localhost:5000", "https://mlflow.example.com",
                   "sqlite:///mlflow.db"):
        assert service_proxy_url(API, direct, "team") is None, direct


def test_the_proxy_gets_the_kubeconfigs_token(tmp_path: Path) -> None:
    """The kubernetes client's own loader, on a kubeconfig whose user has a token."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": API, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "s3cret"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u", "namespace": "team"}}],
    }))
    api = config.new_client_from_config(config_file=str(kubeconfig))
    assert _kube_authorization(api.configuration) == "Bearer s3cret"
    reader = reader_for(api, "http://raylight-mlflow.raylight-system:5000", "team")
    assert reader.base == f"{API}/api/v1/namespaces/raylight-system/services/raylight-mlflow:5000/proxy"
    assert reader.headers["Authorization"] == "Bearer s3cret"
    assert reader.ssl_context is not None and reader.ssl_context.check_hostname is False
    assert reader_for(api, "http://127.0.0.1:5000", "team").base == "http://127.0.0.1:5000"
