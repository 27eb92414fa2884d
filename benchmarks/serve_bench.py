"""Service benchmark: the HTTP service against the direct `serve_local` path, under 1, 4 and 16
concurrent clients, on the digits deployment and on SyntheticDeployment splits of ViT-S and ViT-B.

For each deployment the service (`serve_local_http`, the same code as `edvit serve --local
--http`) runs in a process of its own; the clients are threads of this process, each with its own
keep-alive httpx connection, posting one encoded image per request to `/classify` (a PNG for
digits, a JPEG of random pixels for the 224-pixel ViTs) and timing it from send to parsed JSON.
The direct path is `serve_local` at batch 1 in benchmark mode (the aggregator's own time from
sending the pixels to the fused logits, no HTTP, no decoding), run on the same deployment,
alternating with the one-client HTTP run (`--repeats`, medians; the spread is the range of the HTTP
p50s). Columns: p50 and p99 per request (ms; the direct path reports its median and p95),
throughput (answers/s), and for one client what HTTP adds at p50 (ms and %; target: <= 1 ms or <=
10 %). A last row per deployment serves 16 clients with micro-batching (16 images, 2 ms).

Then the input bytes each device receives per image, as the runtime sends them (tensor bytes of
the pixels; plus a 16-byte control message per request), with the float32 wire of before and the
uint8 wire of now (`planner.wire.input_bytes`), and the time from a worker's SIGKILL to the first
complete answer again with the launcher restarting it (median of `--kill-repeats`).

Everything shares this host's cores (the clients, the aggregator, one process per device); on
the 2-core CI host the numbers say what the service costs relative to the direct path, not what
a fleet of devices would reach.

    python benchmarks/serve_bench.py [--deploy DIR/deploy] [--skip-vit] [--kill-repeats 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtime_bench import demo_deployment  # noqa: E402  (the cached `edvit demo` deployment)

from planner.wire import input_bytes  # noqa: E402

CLIENTS = (1, 4, 16)
TARGET_ADDED_MS, TARGET_ADDED_SHARE = 1.0, 0.10
MICRO_BATCH = {"max_batch": 16, "max_wait_ms": 2.0}


# ------------------------------------------------------------------ the service process

def _source(spec: dict):
    if spec["kind"] == "deploy":
        from vit_ops.runtime.deployment import open_deployment

        return open_deployment(spec["path"])
    from vit_ops.runtime.synthetic import SyntheticDeployment

    return SyntheticDeployment(arch=spec["arch"], keep_ratio=spec["keep_ratio"],
                               devices=spec["devices"])


def serve_child(spec: dict) -> int:
    """The service process: `serve_local_http` on `spec` until SIGTERM."""
    from vit_ops.runtime import RuntimeConfig
    from vit_ops.runtime.launcher import serve_local_http
    from vit_ops.runtime.service import ServiceConfig

    config = RuntimeConfig(timeout_s=120, join_timeout_s=300)
    service = ServiceConfig(port=0, queue_size=256, **spec.get("service", {}))
    return serve_local_http(_source(spec), config, service)


class Service:
    def __init__(self, spec: dict) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve-child", json.dumps(spec)],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        line = self.process.stdout.readline()
        if not line.startswith("serving "):
            raise RuntimeError(f"the service did not start: {line!r}")
        self.url = line.rsplit(" on ", 1)[1].strip()
        self.model = httpx.get(f"{self.url}/v2").json()["models"][0]
        deadline = time.monotonic() + 600
        while httpx.get(f"{self.url}/v2/health/ready").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the service never got ready")
            time.sleep(0.2)

    def worker_pid(self, device: str) -> int:
        meta = httpx.get(f"{self.url}/v2/models/{self.model}").json()
        return next(w["pid"] for w in meta["parameters"]["workers"] if w["device"] == device)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=120)


# ------------------------------------------------------------------ measurements

def encoded_image(size: int, seed: int) -> tuple[bytes, str]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    if size <= 64:
        image.save(buffer, format="PNG")
        return buffer.getvalue(), "image/png"
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue(), "image/jpeg"


def load(service: Service, body: bytes, content_type: str, clients: int,
         per_client: int) -> dict:
    """`clients` threads, `per_client` requests each: latencies (s) and throughput."""
    url = f"{service.url}/v2/models/{service.model}/classify"
    headers = {"Content-Type": content_type}
    barrier = threading.Barrier(clients)

    def client() -> list[float]:
        times = []
        with httpx.Client(timeout=300) as http:
            http.post(url, content=body, headers=headers)  # warm the connection
            barrier.wait()
            for _ in range(per_client):
                start = time.perf_counter()
                response = http.post(url, content=body, headers=headers)
                response.json()
                times.append(time.perf_counter() - start)
                if response.status_code != 200:
                    raise RuntimeError(f"HTTP {response.status_code}: {response.text}")
        return times

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: client(), range(clients)))
    wall = time.perf_counter() - started
    latencies = sorted(t for r in results for t in r)
    return {"p50": _quantile(latencies, 0.5), "p99": _quantile(latencies, 0.99),
            "throughput": len(latencies) / wall}


def direct(spec: dict, images: int) -> dict:
    from vit_ops.runtime import RuntimeConfig, serve_local

    result = serve_local(_source(spec), images, RuntimeConfig(timeout_s=120, join_timeout_s=300))
    return {"p50": result.latency_median_s, "p95": result.latency_p95_s,
            "throughput": result.throughput_images_per_s}


def time_to_recover(service: Service, body: bytes, content_type: str, device: str) -> float:
    """Seconds from SIGKILL of `device`'s worker to the first complete (200, not degraded)
    answer, one client sending back to back."""
    url = f"{service.url}/v2/models/{service.model}/classify"
    victim = service.worker_pid(device)
    with httpx.Client(timeout=300) as http:
        http.post(url, content=body, headers={"Content-Type": content_type})
        killed = time.perf_counter()
        os.kill(victim, signal.SIGKILL)
        while True:
            response = http.post(url, content=body, headers={"Content-Type": content_type})
            if response.status_code == 200 and not response.json()["degraded"] and \
                    service.worker_pid(device) != victim:
                return time.perf_counter() - killed
            if time.perf_counter() - killed > 120:
                raise RuntimeError("no complete answer within 120 s of the kill")


def _quantile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, int(round(q * len(sorted_values) + 0.5)) - 1))
    return sorted_values[index]


# ------------------------------------------------------------------ main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deploy", help="digits deployment (default: edvit demo's, cached)")
    parser.add_argument("--skip-vit", action="store_true")
    parser.add_argument("--requests", type=int, default=200,
                        help="requests per setting on digits (ViTs: a twentieth, at least 10)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="alternating direct / HTTP runs at one client (medians)")
    parser.add_argument("--kill-repeats", type=int, default=3)
    parser.add_argument("--serve-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_child:
        sys.exit(serve_child(json.loads(args.serve_child)))

    deploy = Path(args.deploy) if args.deploy else demo_deployment()
    settings = [("digits", {"kind": "deploy", "path": str(deploy)}, args.requests)]
    if not args.skip_vit:
        vit_requests = max(10, args.requests // 20)
        settings += [(f"{name} r=0.25 x4", {"kind": "synthetic", "arch": arch,
                                            "keep_ratio": 0.25, "devices": 4}, vit_requests)
                     for name, arch in (("ViT-S/16", "vit_small_patch16_224"),
                                        ("ViT-B/16", "vit_base_patch16_224"))]
    print(f"host: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start\n")
    latency_rows, bytes_rows, recover_rows = [], [], []
    for name, spec, requests in settings:
        source = _source(spec)
        channels, size, _ = source.image_shape()
        body, content_type = encoded_image(size, seed=0)
        service = Service(spec)
        try:
            # one client: the direct path and HTTP alternately, medians over the repeats
            pairs = [(direct(spec, requests), load(service, body, content_type, 1, requests))
                     for _ in range(args.repeats)]
            reference = {key: statistics.median(d[key] for d, _ in pairs)
                         for key in ("p50", "p95", "throughput")}
            one = {key: statistics.median(h[key] for _, h in pairs)
                   for key in ("p50", "p99", "throughput")}
            added_ms = (one["p50"] - reference["p50"]) * 1e3
            share = added_ms / (reference["p50"] * 1e3)
            met = added_ms <= TARGET_ADDED_MS or share <= TARGET_ADDED_SHARE
            added = f"{added_ms:+.2f} ms ({share:+.0%}){' met' if met else ' missed'}"
            spread = max(h["p50"] for _, h in pairs) - min(h["p50"] for _, h in pairs)
            latency_rows.append(
                f"| {name} | direct serve_local | 1 | {reference['p50'] * 1e3:.2f} | "
                f"({reference['p95'] * 1e3:.2f} p95) | {reference['throughput']:.1f} | |")
            latency_rows.append(
                f"| {name} | HTTP /classify | 1 | {one['p50'] * 1e3:.2f} "
                f"(spread {spread * 1e3:.2f}) | {one['p99'] * 1e3:.2f} | "
                f"{one['throughput']:.1f} | {added} |")
            for clients in CLIENTS[1:]:
                measured = load(service, body, content_type, clients,
                                max(2, requests // clients))
                latency_rows.append(
                    f"| {name} | HTTP /classify | {clients} | {measured['p50'] * 1e3:.2f} | "
                    f"{measured['p99'] * 1e3:.2f} | {measured['throughput']:.1f} | |")
            if spec["kind"] == "deploy":
                meta = httpx.get(f"{service.url}/v2/models/{service.model}").json()
                device = meta["parameters"]["devices"][1]
                times = [time_to_recover(service, body, content_type, device)
                         for _ in range(args.kill_repeats)]
                recover_rows.append(f"| {name} | {device} | {statistics.median(times):.2f} | "
                                    f"{min(times):.2f} | {max(times):.2f} |")
        finally:
            service.stop()
        batching = Service({**spec, "service": MICRO_BATCH})
        try:
            clients = CLIENTS[-1]
            measured = load(batching, body, content_type, clients, max(2, requests // clients))
            latency_rows.append(
                f"| {name} | HTTP, --max-batch {MICRO_BATCH['max_batch']} --max-wait-ms "
                f"{MICRO_BATCH['max_wait_ms']:g} | {clients} | {measured['p50'] * 1e3:.2f} | "
                f"{measured['p99'] * 1e3:.2f} | {measured['throughput']:.1f} | |")
        finally:
            batching.stop()
        before = input_bytes(size, channels, dtype="float32")
        after = input_bytes(size, channels)
        bytes_rows.append(f"| {name} | {channels}x{size}x{size} | {before} | {after} | "
                          f"{after / before:.2f} |")

    print("latency per request (ms) and throughput, HTTP service vs the direct path")
    print("| deployment | path | clients | p50 ms | p99 ms | answers/s | HTTP adds at p50 |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(latency_rows))
    print("\ninput bytes per image per device (the pixels sent; + 16 B control per request)")
    print("| deployment | image | float32 wire (before) | uint8 wire (now) | ratio |")
    print("|---|---|---|---|---|")
    print("\n".join(bytes_rows))
    if recover_rows:
        print(f"\nworker SIGKILL -> first complete answer, --local restart "
              f"({args.kill_repeats} kills)")
        print("| deployment | device | median s | min s | max s |")
        print("|---|---|---|---|---|")
        print("\n".join(recover_rows))
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
