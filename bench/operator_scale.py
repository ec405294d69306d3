"""Operator scale: create N TuneSweeps against the real control plane; time until each RayJob exists.

Starts the test control plane (tests/cluster/up), runs `raylight operator` as its own process,
creates N TuneSweeps at a fixed rate (default 10/s) from a thread pool, and watches RayJobs;
then N=1000 once more as fast as 8 client threads go (a burst, to show the headroom).
Reports, per N: create -> RayJob latency (p50, p99), the time from the first create to the last
RayJob, and the operator's peak RSS (VmHWM). Results: bench/results/operator_scale.json and .png.

    python bench/operator_scale.py [--sizes 100 1000] [--rate 10] [--burst 1000]
"""

from __future__ import annotations

import argparse
import json
import os
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

from raylight.local.runner import free_port

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
    latencies = [seen[name] - created[name] for name in created if name in seen]
    result = {
        "n": n,
        "rate_per_s": rate if rate != float("inf") else "unbounded",
        "rayjobs_created": len(seen),
        "all_created": finished,
        "create_seconds": round(creates_done - start, 2),
        "total_seconds": round(max(seen.values()) - start, 2) if seen else None,
        "latency_p50_s": round(percentile(latencies, 50), 3),
        "latency_p99_s": round(percentile(latencies, 99), 3),
        "latency_max_s": round(max(latencies), 3),
        "latency_mean_s": round(statistics.fmean(latencies), 3),
        "latencies_s": [round(v, 4) for v in sorted(latencies)],
    }
    print(json.dumps({k: v for k, v in result.items() if k != "latencies_s"}), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--rate", type=float, default=10.0, help="TuneSweep creates per second")
    parser.add_argument("--burst", type=int, default=1000, help="then this many at an unbounded rate (0: skip)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cluster = Path(tmp) / "cluster"
        subprocess.run([str(ROOT / "tests" / "cluster" / "up"), str(cluster)], check=True)
        kubeconfig = cluster / "kubeconfig"
        health = free_port()
        operator = subprocess.Popen(
            [sys.executable, "-m", "raylight.cli", "operator", "--kubeconfig", str(kubeconfig),
             "--mlflow-tracking-uri", "http://127.0.0.1:9", "--metrics-port", "0", "--health-port", str(health)],
            stdout=(Path(tmp) / "operator.log").open("w"), stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=1)
                    break
                except OSError:
                    if time.monotonic() > deadline or operator.poll() is not None:
                        raise RuntimeError((Path(tmp) / "operator.log").read_text()[-3000:]) from None
                    time.sleep(0.5)
            rss_idle = peak_rss_mb(operator.pid)
            api_client = config.new_client_from_config(str(kubeconfig))
            api_client.configuration.connection_pool_maxsize = 16
            api, core = client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)
            runs: list[dict[str, Any]] = []
            plan = [(n, args.rate) for n in args.sizes] + ([(args.burst, float("inf"))] if args.burst else [])
            for n, rate in plan:
                result = run_size(api, core, n, rate)
                runs.append({**result, "operator_peak_rss_mb": round(peak_rss_mb(operator.pid), 1)})
        finally:
            operator.terminate()
            try:
                operator.wait(timeout=30)
            except subprocess.TimeoutExpired:
                operator.kill()
            subprocess.run([str(ROOT / "tests" / "cluster" / "down"), str(cluster)], check=False)

    report = {
        "benchmark": "operator_scale",
        "machine": f"{os.cpu_count()} cores (control plane, operator and client share them)",
        "operator_idle_rss_mb": round(rss_idle, 1),
        "targets": {"all_1000_within_s": 120, "p99_s": 5, "peak_rss_mb": 250},
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "operator_scale.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report)


def plot(report: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for run in report["runs"]:
        values = run["latencies_s"]
        rate = run["rate_per_s"]
        ax.plot(values, [(i + 1) / len(values) for i in range(len(values))],
                label=f"N={run['n']} at {rate if isinstance(rate, str) else f'{rate:.0f}/s'}: "
                      f"p50 {run['latency_p50_s']} s, p99 {run['latency_p99_s']} s, all in {run['total_seconds']} s")
    ax.axvline(report["targets"]["p99_s"], color="grey", linestyle="--", label="p99 target (5 s)")
    ax.set_xscale("log")
    ax.set_xlabel("TuneSweep create -> RayJob exists (s)")
    ax.set_ylabel("fraction of TuneSweeps")
    ax.set_title("TuneSweep -> RayJob latency (2 cores: control plane, operator, client)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "operator_scale.png", dpi=120)


if __name__ == "__main__":
    main()
