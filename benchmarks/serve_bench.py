"""Service benchmark: the HTTP service against the direct `serve_local` path, under 1, 4 and 16
concurrent clients, on `edvit demo`'s 4-device digits deployment (and any --deploy one) and on
SyntheticDeployment splits of ViT-S and ViT-B.

For each deployment the service (`serve_local_http`, the same code as `edvit serve --local
--http`) runs in a process of its own; the clients are threads of this process, each with its own
keep-alive connection, posting one encoded image per request to `/classify` (a PNG for digits, a
JPEG of random pixels for the 224-pixel ViTs) and timing it from send to parsed JSON. The load
generator is the standard library's `http.client` (its own Python is the least CPU taken from
the fleet's shared cores); one row per deployment repeats the one-client run with httpx, what
`vit_ops.runtime.Client` uses, to show what a heavier client adds. The direct path is
`serve_local` at batch 1 in benchmark mode (the aggregator's own time from sending the pixels to
the fused logits: no HTTP, no decoding), on the same deployment, interleaved with the one-client
HTTP runs (`--repeats` rounds of direct, http.client, httpx; medians, the spread is the range of
the p50s). Columns: p50 and p99 per request (ms), throughput (answers/s), and for one client what
HTTP adds at p50 (ms and %; target: <= 1 ms or <= 10 %) and at p99, two ways: against the direct
run (two runs of two fleets: their difference carries the run-to-run spread of the fleet itself,
on a shared 2-core host often more than the target), and paired (per request, the client's time
less the `fleet` stage of that same request's `Server-Timing` header, which is what the direct path
times: HTTP's own cost, free of the fleet's spread; the median over requests, then over repeats).
A last row per deployment serves 16 clients with micro-batching (16 images, 2 ms).

Then the input bytes each device receives per image, as the runtime sends them (tensor bytes of
the pixels; plus a 16-byte control message per request), with the float32 wire of before and the
uint8 wire of now (`planner.wire.input_bytes`), and the time from a worker's SIGKILL to the first
complete answer again with the launcher restarting it (median of `--kill-repeats`).

Everything shares this host's cores (the clients, the aggregator, one process per device); on
the 2-core CI host the numbers say what the service costs relative to the direct path, not what
a fleet of devices would reach. Run it at normal priority and note the load average it prints.

    python benchmarks/serve_bench.py [--deploy DIR/deploy] [--skip-demo] [--skip-vit]
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

import http.client
from urllib.parse import urlsplit

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtime_bench import demo_deployment  # noqa: E402  (the cached `edvit demo` deployment)

from planner.wire import input_bytes  # noqa: E402
from vit_ops.timing import nearest_rank_percentile  # noqa: E402

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


class StdlibClient:
    """One keep-alive connection with the standard library's `http.client`: the leanest real
    client, so the client's own Python costs the fleet's shared cores little."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.path = parts.path
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)

    def post(self, body: bytes, headers: dict) -> tuple[int, dict, float | None]:
        try:
            self.connection.request("POST", self.path, body=body, headers=headers)
            response = self.connection.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # the server closed an idle keep-alive connection (uvicorn after 5 s): reconnect, as
            # httpx does on its own
            self.connection.close()
            self.connection.request("POST", self.path, body=body, headers=headers)
            response = self.connection.getresponse()
        answer = json.loads(response.read())
        return response.status, answer, fleet_seconds(response.getheader("Server-Timing"))

    def close(self) -> None:
        self.connection.close()


class HttpxClient:
    """The same over httpx (what `vit_ops.runtime.Client` uses)."""

    def __init__(self, url: str) -> None:
        self.url, self.http = url, httpx.Client(timeout=300)

    def post(self, body: bytes, headers: dict) -> tuple[int, dict, float | None]:
        response = self.http.post(self.url, content=body, headers=headers)
        return (response.status_code, response.json(),
                fleet_seconds(response.headers.get("Server-Timing")))

    def close(self) -> None:
        self.http.close()


CLIENT_KINDS = {"http.client": StdlibClient, "httpx": HttpxClient}


def fleet_seconds(server_timing: str | None) -> float | None:
    """The `fleet` stage of a `Server-Timing` header (`decode;dur=0.2, queue;dur=0.1,
    fleet;dur=4.1`, milliseconds), in seconds; None without one."""
    for part in (server_timing or "").split(","):
        name, _, duration = part.strip().partition(";dur=")
        if name == "fleet":
            return float(duration) / 1e3
    return None


def load(service: Service, body: bytes, content_type: str, clients: int,
         per_client: int, kind: str = "http.client") -> dict:
    """`clients` threads, `per_client` requests each: latencies (s) and throughput."""
    url = f"{service.url}/v2/models/{service.model}/classify"
    headers = {"Content-Type": content_type}
    barrier = threading.Barrier(clients)

    def client() -> list[tuple[float, float]]:
        times = []  # (client's seconds, the fleet's seconds of that request)
        connection = CLIENT_KINDS[kind](url)
        try:
            connection.post(body, headers)  # warm the connection
            barrier.wait()
            for _ in range(per_client):
                start = time.perf_counter()
                status, answer, fleet_s = connection.post(body, headers)
                times.append((time.perf_counter() - start, fleet_s))
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {answer}")
                if fleet_s is None:
                    raise RuntimeError("the answer has no Server-Timing fleet stage")
        finally:
            connection.close()
        return times

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: client(), range(clients)))
    wall = time.perf_counter() - started
    latencies = sorted(t for r in results for t, _ in r)
    own = sorted(t - fleet_s for r in results for t, fleet_s in r)
    return {"p50": nearest_rank_percentile(latencies, 0.5),
            "p99": nearest_rank_percentile(latencies, 0.99), "throughput": len(latencies) / wall,
            "own_p50": nearest_rank_percentile(own, 0.5),
            "own_p99": nearest_rank_percentile(own, 0.99)}


def direct(spec: dict, images: int) -> dict:
    from vit_ops.runtime import RuntimeConfig, serve_local

    result = serve_local(_source(spec), images, RuntimeConfig(timeout_s=120, join_timeout_s=300))
    return {"p50": result.latency_median_s, "p99": result.latency_p99_s,
            "throughput": result.throughput_images_per_s}


def interleaved(spec: dict, service: "Service", body: bytes, content_type: str, requests: int,
                repeats: int) -> dict[str, dict]:
    """The direct path and one HTTP client of each kind, one run of each in turn per repeat;
    per path the medians over the repeats, and the range of its p50s ('spread')."""
    runs: dict[str, list[dict]] = {"direct": [], **{kind: [] for kind in CLIENT_KINDS}}
    for _ in range(repeats):
        runs["direct"].append(direct(spec, requests))
        for kind in CLIENT_KINDS:
            runs[kind].append(load(service, body, content_type, 1, requests, kind))
    summary = {}
    for path, measured in runs.items():
        summary[path] = {key: statistics.median(m[key] for m in measured)
                         for key in measured[0]}
        p50s = [m["p50"] for m in measured]
        summary[path]["spread"] = max(p50s) - min(p50s)
    return summary


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


# ------------------------------------------------------------------ main

def _added(http: dict, reference: dict) -> str:
    """What HTTP adds to the direct path at p50 against the target, and at p99: against the
    direct run, and paired (the client's time less the same request's fleet stage)."""
    def judged(added_ms: float) -> str:
        share = added_ms / (reference["p50"] * 1e3)
        met = added_ms <= TARGET_ADDED_MS or share <= TARGET_ADDED_SHARE
        return f"{added_ms:+.2f} ms ({share:+.0%}) {'met' if met else 'missed'}"

    return (f"{judged((http['p50'] - reference['p50']) * 1e3)}; "
            f"p99 {(http['p99'] - reference['p99']) * 1e3:+.2f} ms | "
            f"{judged(http['own_p50'] * 1e3)}; p99 {http['own_p99'] * 1e3:+.2f} ms")


def _row(name: str, path: str, clients: int, measured: dict, added: str = "") -> str:
    spread = f" (spread {measured['spread'] * 1e3:.2f})" if "spread" in measured else ""
    added = added or " | "
    return (f"| {name} | {path} | {clients} | {measured['p50'] * 1e3:.2f}{spread} | "
            f"{measured['p99'] * 1e3:.2f} | {measured['throughput']:.1f} | {added} |")


def settings_of(args: argparse.Namespace) -> list[tuple[str, dict, int]]:
    """(row name, what to serve, requests per setting): `edvit demo`'s deployment, the
    --deploy ones, and (unless --skip-vit) the synthetic ViT splits."""
    from vit_ops.runtime.source import devices_of

    deploys = [("edvit demo", demo_deployment())] if not args.skip_demo else []
    deploys += [(f"digits {Path(d).parent.name}/{Path(d).name}", Path(d)) for d in args.deploy]
    settings = []
    for name, path in deploys:
        spec = {"kind": "deploy", "path": str(path)}
        settings.append((f"{name} ({len(devices_of(_source(spec)))} devices)", spec,
                         args.requests))
    if not args.skip_vit:
        vit_requests = max(10, args.requests // 20)
        settings += [(f"{name} r=0.25 x4", {"kind": "synthetic", "arch": arch,
                                            "keep_ratio": 0.25, "devices": 4}, vit_requests)
                     for name, arch in (("ViT-S/16", "vit_small_patch16_224"),
                                        ("ViT-B/16", "vit_base_patch16_224"))]
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deploy", action="append", default=[],
                        help="another digits deployment to measure (repeatable)")
    parser.add_argument("--skip-demo", action="store_true",
                        help="leave out edvit demo's deployment (built once into a cache)")
    parser.add_argument("--skip-vit", action="store_true")
    parser.add_argument("--requests", type=int, default=200,
                        help="requests per setting on digits (ViTs: a twentieth, at least 10)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved direct / HTTP runs at one client (medians)")
    parser.add_argument("--kill-repeats", type=int, default=3)
    parser.add_argument("--serve-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_child:
        sys.exit(serve_child(json.loads(args.serve_child)))

    settings = settings_of(args)
    print(f"host: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start\n",
          flush=True)
    latency_rows, bytes_rows, recover_rows = [], [], []
    for name, spec, requests in settings:
        source = _source(spec)
        channels, size, _ = source.image_shape()
        body, content_type = encoded_image(size, seed=0)
        service = Service(spec)
        try:
            one = interleaved(spec, service, body, content_type, requests, args.repeats)
            latency_rows.append(_row(name, "direct serve_local", 1, one["direct"]))
            for kind in CLIENT_KINDS:
                latency_rows.append(_row(name, f"HTTP /classify ({kind})", 1, one[kind],
                                         _added(one[kind], one["direct"])))
            for clients in CLIENTS[1:]:
                measured = load(service, body, content_type, clients,
                                max(2, requests // clients))
                latency_rows.append(_row(name, "HTTP /classify (http.client)", clients,
                                         measured))
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
            latency_rows.append(_row(
                name, f"HTTP, --max-batch {MICRO_BATCH['max_batch']} --max-wait-ms "
                      f"{MICRO_BATCH['max_wait_ms']:g}", clients, measured))
        finally:
            batching.stop()
        before = input_bytes(size, channels, dtype="float32")
        after = input_bytes(size, channels)
        bytes_rows.append(f"| {name} | {channels}x{size}x{size} | {before} | {after} | "
                          f"{after / before:.2f} |")
        print(f"{name}: done (load average {os.getloadavg()[0]:.2f})", file=sys.stderr,
              flush=True)

    print(f"latency per request (ms) and throughput, HTTP service vs the direct path "
          f"(one client: {args.repeats} interleaved runs each, medians)")
    print("| deployment | path | clients | p50 ms | p99 ms | answers/s | HTTP adds vs the direct "
          "run | HTTP's own cost (paired) |")
    print("|---|---|---|---|---|---|---|---|")
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
