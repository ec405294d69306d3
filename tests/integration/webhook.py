"""A real validating admission webhook on RayJobs, served by the test on 127.0.0.1 over TLS.

The API server calls it for every create and update of a RayJob in one namespace. A test tells it
to hold the operator's writes for a while (a slow policy engine: the window in which a reconcile
that read the RayJob before writing it can act on a stale read) or to refuse them (a policy that
says no: not the user's spec error).
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from raylight.operator.builder import FIELD_MANAGER

from .conftest import Cluster


class RayJobPolicy:
    def __init__(self) -> None:
        self.hold_s = 0.0
        self.refusal: str | None = None
        self.held = threading.Event()  # set when an operator write is being held
        self.seen: list[str] = []

    def review(self, request: dict[str, Any]) -> dict[str, Any]:
        manager = (request.get("options") or {}).get("fieldManager")
        self.seen.append(f"{request['operation']} {manager}")
        answer: dict[str, Any] = {"uid": request["uid"], "allowed": True}
        if manager != FIELD_MANAGER:
            return answer
        if self.refusal:
            answer.update(allowed=False, status={"code": 403, "message": self.refusal})
        elif self.hold_s:
            self.held.set()
            time.sleep(self.hold_s)
        return answer


def _certificate(directory: Path) -> tuple[Path, Path]:
    key, cert = directory / "webhook.key", directory / "webhook.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    return key, cert


@contextmanager
def rayjob_webhook(cluster: Cluster, namespace: str, directory: Path) -> Iterator[RayJobPolicy]:
    policy = RayJobPolicy()

    class Handler(BaseHTTPRequestHandler):
        def setup(self) -> None:
            self.request.do_handshake()
            super().setup()

        def do_POST(self) -> None:
            review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                               "response": policy.review(review["request"])}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    key, cert = _certificate(directory)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    # The handshake happens in each request's thread, not in the accepting one: a client that
    # stalls mid-handshake must not hold up the API server's next call.
    server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    name = f"rayjob-policy-{namespace}"
    config = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "rayjobs.policy.raylight.test", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "timeoutSeconds": 30, "failurePolicy": "Fail",
            "clientConfig": {"url": f"https://127.0.0.1:{server.server_address[1]}/",
                             "caBundle": base64.b64encode(cert.read_bytes()).decode()},
            "rules": [{"apiGroups": ["ray.io"], "apiVersions": ["v1"], "resources": ["rayjobs"],
                       "operations": ["CREATE", "UPDATE"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        }],
    }
    try:
        cluster.kubectl("apply", "-f", "-", input=json.dumps(config))
        yield policy
    finally:
        cluster.kubectl("delete", "validatingwebhookconfiguration", name, "--ignore-not-found", check=False)
        server.shutdown()
        server.server_close()
