"""Operator scale: create N TuneSweeps against the real control plane; time until each RayJob exists.

Starts the test control plane (tests/cluster/up), runs `raylight operator` as its own process,
creates N TuneSweeps at a fixed rate (default 10/s) from a thread pool, and watches RayJobs;
then N=1000 once more as fast as 8 client threads go (a burst, to show the headroom); then 1000
sweeps Running, each with its MLflow parent run, with the operator reading progress from a real
MLflow server: MLflow requests per resource per progress interval, and the reconcile latency of
runs that end (RayJob Complete -> TuneSweep Succeeded) while the others run and are polled.
Reports, per phase: latencies (p50, p99), and the operator's peak RSS (VmHWM) so far. Each phase
deletes its namespace before the next. Results: bench/results/operator_scale.json and .png.

    python bench/operator_scale.py [--sizes 100 1000] [--rate 10] [--burst 1000] [--running 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config, watch

from raylight_trainer.runtime.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def sweep(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "examples" / "cluster-quickstart.yaml").read_text())
    doc["metadata"] = {"name": name}
    return dict(doc)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def run_size(api: client.CustomObjectsApi, core: client.CoreV1Api, n: int, rate: float) -> dict[str, Any]:
    namespace = f"bench-{n}-{'burst' if rate == float('inf') else int(rate)}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    seen: dict[str, float] = {}
    created: dict[str, float] = {}
    all_seen = threading.Event()
    stream = watch.Watch()

    def watch_rayjobs() -> None:
        for event in stream.stream(api.list_namespaced_custom_object, "ray.io", "v1", namespace, "rayjobs",
                                   timeout_seconds=600):
            name = event["object"]["metadata"]["name"]
            seen.setdefault(name, time.perf_counter())
            if len(seen) >= n:
                all_seen.set()
                stream.stop()

    watcher = threading.Thread(target=watch_rayjobs, daemon=True)
    watcher.start()
    time.sleep(1)  # the watch is open before the first create

    def create(index: int) -> None:
        name = f"s{index:04d}"
        api.create_namespaced_custom_object("raylight.dev", "v1alpha1", namespace, "tunesweeps", sweep(name))
        created[f"ts-{name}"] = time.perf_counter()

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        for index in range(n):
            delay = start + index / rate - time.perf_counter()  # 0 when the rate is unbounded
            if delay > 0:
                time.sleep(delay)
            pool.submit(create, index)
    creates_done = time.perf_counter()
    finished = all_seen.wait(timeout=600)
    # The status writes come after the RayJobs in a burst: when has every sweep its status?
    wait_until(lambda: _listed(api, namespace, "tunesweeps", lambda b: (b.get("status") or {})
                               .get("observedGeneration")), n, "every status written", poll=0.5)
    statuses_done = time.perf_counter()
    latencies = [seen[name] - created[name] for name in created if name in seen]
    result = {
        "n": n,
        "rate_per_s": rate if rate != float("inf") else "unbounded",
        "rayjobs_created": len(seen),
        "all_created": finished,
        "create_seconds": round(creates_done - start, 2),
        "total_seconds": round(max(seen.values()) - start, 2) if seen else None,
        "all_statuses_seconds": round(statuses_done - start, 2),
        "latency_p50_s": round(percentile(latencies, 50), 3),
        "latency_p99_s": round(percentile(latencies, 99), 3),
        "latency_max_s": round(max(latencies), 3),
        "latency_mean_s": round(statistics.fmean(latencies), 3),
        "latencies_s": [round(v, 4) for v in sorted(latencies)],
        "namespace": namespace,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "latencies_s"}), flush=True)
    return result


def drop_namespace(core: client.CoreV1Api, namespace: str) -> None:
    """The next phase starts with an empty operator: the namespace and all in it go (the garbage
    collector follows the owner references), and the operator sees every deletion."""
    core.delete_namespace(namespace)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            core.read_namespace(namespace)
        except client.exceptions.ApiException as exc:
            if exc.status == 404:
                return
            raise
        time.sleep(2)
    raise RuntimeError(f"namespace {namespace} was not deleted")


def scrape(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith(name))


def parallel(function: Any, items: list[Any], threads: int = 8) -> None:
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(function, items))


def run_active(api: client.CustomObjectsApi, core: client.CoreV1Api, n: int, mlflow_uri: str, metrics_port: int,
               interval: float, finishes: int) -> dict[str, Any]:
    """N sweeps Running with their MLflow parent runs: MLflow requests per resource per interval
    while nothing changes, then the reconcile latency of `finishes` runs ending (RayJob Complete ->
    TuneSweep Succeeded) while the rest keep running and being polled."""
    from mlflow.tracking import MlflowClient

    from raylight.api import SweepProgress, TrialCounts
    from raylight.api.tags import TAG_PROGRESS, TAG_UID

    namespace = f"bench-running-{n}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    names = [f"r{i:04d}" for i in range(n)]
    parallel(lambda name: api.create_namespaced_custom_object("raylight.dev", "v1alpha1", namespace, "tunesweeps",
                                                              sweep(name)), names)
    sweeps = wait_until(lambda: _listed(api, namespace, "tunesweeps", lambda b: (b.get("status") or {})
                                        .get("rayJobName")), n, "every RayJob")
    mlflow = MlflowClient(mlflow_uri)
    name_in_spec = sweep("x")["spec"]["mlflow"]["experiment"]  # where the operator looks for the runs
    found = mlflow.get_experiment_by_name(name_in_spec)
    experiment = found.experiment_id if found else mlflow.create_experiment(name_in_spec)
    progress = SweepProgress(trials=TrialCounts(total=12, pending=10, running=2)).model_dump_json(by_alias=True)
    parallel(lambda body: mlflow.create_run(experiment, tags={TAG_UID: body["metadata"]["uid"],
                                                              TAG_PROGRESS: progress}), list(sweeps.values()))
    running = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}
    parallel(lambda name: api.patch_namespaced_custom_object_status(
        "ray.io", "v1", namespace, "rayjobs", f"ts-{name}", {"status": running}), names)
    started = time.perf_counter()
    wait_until(lambda: _listed(api, namespace, "tunesweeps", lambda b: (b.get("status") or {})
                               .get("progress") == "0/12"), n, "every sweep Running with its progress")
    found_s = time.perf_counter() - started
    before = scrape(metrics_port, "raylight_mlflow_requests_total")
    window = 3 * interval
    time.sleep(window)
    per_interval = (scrape(metrics_port, "raylight_mlflow_requests_total") - before) / n / (window / interval)

    ended: dict[str, float] = {}
    stream = watch.Watch()

    def watch_sweeps() -> None:
        for event in stream.stream(api.list_namespaced_custom_object, "raylight.dev", "v1alpha1", namespace,
                                   "tunesweeps", timeout_seconds=600):
            body = event["object"]
            if (body.get("status") or {}).get("phase") == "Succeeded":
                ended.setdefault(body["metadata"]["name"], time.perf_counter())
                if len(ended) >= finishes:
                    stream.stop()

    watcher = threading.Thread(target=watch_sweeps, daemon=True)
    watcher.start()
    time.sleep(1)
    patched: dict[str, float] = {}
    complete = {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}
    for name in names[:finishes]:  # 10 runs end per second, as the others run on
        api.patch_namespaced_custom_object_status("ray.io", "v1", namespace, "rayjobs", f"ts-{name}",
                                                  {"status": complete})
        patched[name] = time.perf_counter()
        time.sleep(0.1)
    watcher.join(timeout=120)
    latencies = [ended[name] - patched[name] for name in patched if name in ended]
    result = {
        "phase": "running", "n": n, "progress_interval_s": interval, "window_s": window,
        "first_progress_all_s": round(found_s, 1),
        "mlflow_requests_per_resource_per_interval": round(per_interval, 3),
        "finishes": finishes, "finished_seen": len(latencies),
        "reconcile_p50_s": round(percentile(latencies, 50), 3), "reconcile_p99_s": round(percentile(latencies, 99), 3),
        "reconcile_max_s": round(max(latencies), 3), "latencies_s": [round(v, 4) for v in sorted(latencies)],
    }
    print(json.dumps({k: v for k, v in result.items() if k != "latencies_s"}), flush=True)
    return result


def _listed(api: client.CustomObjectsApi, namespace: str, plural: str, keep: Any) -> dict[str, dict[str, Any]]:
    items = api.list_namespaced_custom_object("raylight.dev", "v1alpha1", namespace, plural)["items"]
    return {b["metadata"]["name"]: b for b in items if keep(b)}


def wait_until(found: Any, n: int, what: str, timeout: float = 600, poll: float = 2) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        current = found()
        if len(current) >= n:
            return dict(current)
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}: {len(current)}/{n}")
        time.sleep(poll)


def start_mlflow(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{directory / 'mlflow.db'}", "--workers", "1"],
        stdout=(directory / "mlflow.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    wait_http(f"{uri}/health", process, directory / "mlflow.log")
    return process, uri


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(log.read_text()[-3000:]) from None
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--rate", type=float, default=10.0, help="TuneSweep creates per second")
    parser.add_argument("--burst", type=int, default=1000, help="then this many at an unbounded rate (0: skip)")
    parser.add_argument("--running", type=int, default=1000,
                        help="then this many Running with MLflow progress polling on (0: skip)")
    parser.add_argument("--progress-interval", type=float, default=30.0, help="the operator's --progress-interval")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cluster = Path(tmp) / "cluster"
        subprocess.run([str(ROOT / "tests" / "cluster" / "up"), str(cluster)], check=True)
        kubeconfig = cluster / "kubeconfig"
        mlflow, mlflow_uri = start_mlflow(Path(tmp))
        health, metrics_port = free_port(), free_port()
        operator = subprocess.Popen(
            [sys.executable, "-m", "raylight.cli", "operator", "--kubeconfig", str(kubeconfig),
             "--mlflow-tracking-uri", mlflow_uri, "--metrics-port", str(metrics_port), "--health-port", str(health),
             "--progress-interval", str(args.progress_interval)],
            stdout=(Path(tmp) / "operator.log").open("w"), stderr=subprocess.STDOUT,
        )
        try:
            wait_http(f"http://127.0.0.1:{health}/healthz", operator, Path(tmp) / "operator.log", timeout=60)
            rss_idle = peak_rss_mb(operator.pid)
            api_client = config.new_client_from_config(str(kubeconfig))
            api_client.configuration.connection_pool_maxsize = 16
            api, core = client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)
            runs: list[dict[str, Any]] = []
            plan = [(n, args.rate) for n in args.sizes] + ([(args.burst, float("inf"))] if args.burst else [])
            for n, rate in plan:
                result = run_size(api, core, n, rate)
                runs.append({**result, "operator_peak_rss_mb": round(peak_rss_mb(operator.pid), 1)})
                drop_namespace(core, result["namespace"])
            if args.running:
                result = run_active(api, core, args.running, mlflow_uri, metrics_port, args.progress_interval,
                                    finishes=min(200, args.running))
                runs.append({**result, "operator_peak_rss_mb": round(peak_rss_mb(operator.pid), 1)})
        finally:
            operator.terminate()
            try:
                operator.wait(timeout=30)
            except subprocess.TimeoutExpired:
                operator.kill()
            os.killpg(mlflow.pid, signal.SIGTERM)
            mlflow.wait(timeout=30)
            subprocess.run([str(ROOT / "tests" / "cluster" / "down"), str(cluster)], check=False)

    report = {
        "benchmark": "operator_scale",
        "machine": f"{os.cpu_count()} cores (control plane, operator and client share them)",
        "operator_idle_rss_mb": round(rss_idle, 1),
        "targets": {"all_1000_within_s": 120, "p99_s": 5, "peak_rss_mb": 250, "running_reconcile_p99_s": 1,
                    "mlflow_requests_per_resource_per_interval": 1},
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "operator_scale.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report)


def plot(report: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5.5))
    for run in report["runs"]:
        values = run["latencies_s"]
        fraction = [(i + 1) / len(values) for i in range(len(values))]
        if run.get("phase") == "running":
            ax2.plot(values, fraction, label=f"{run['finishes']} of {run['n']} Running end at 10/s: "
                     f"p50 {run['reconcile_p50_s']} s, p99 {run['reconcile_p99_s']} s; "
                     f"{run['mlflow_requests_per_resource_per_interval']} MLflow req/resource/interval")
            continue
        rate = run["rate_per_s"]
        ax.plot(values, fraction,
                label=f"N={run['n']} at {rate if isinstance(rate, str) else f'{rate:.0f}/s'}: "
                      f"p50 {run['latency_p50_s']} s, p99 {run['latency_p99_s']} s, all in {run['total_seconds']} s")
    ax.axvline(report["targets"]["p99_s"], color="grey", linestyle="--", label="p99 target (5 s)")
    ax.set_xscale("log")
    ax.set_xlabel("TuneSweep create -> RayJob exists (s)")
    ax.set_ylabel("fraction of TuneSweeps")
    ax.set_title("create -> RayJob (2 cores: control plane, operator, client)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), fontsize=7)
    ax2.axvline(report["targets"]["running_reconcile_p99_s"], color="grey", linestyle="--", label="p99 target (1 s)")
    ax2.set_xscale("log")
    ax2.set_xlabel("RayJob Complete -> TuneSweep Succeeded (s)")
    ax2.set_title("reconcile latency with 1000 Running, progress polling on")
    ax2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "operator_scale.png", dpi=120)


if __name__ == "__main__":
    main()
