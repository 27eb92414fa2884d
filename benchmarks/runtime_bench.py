"""Runtime benchmark: the digits deployment served by 4 local workers + the aggregator.

For each setting the fleet is started, every sub-model is first timed alone (one device at a time,
the others idle, torch.utils.benchmark with the worker's threads pinned) and the fusion head on the
aggregator, then N held-out images are served. Columns (medians over repeats, spread = max - min):
end-to-end latency per request (median of the run), the critical path (slowest sub-model alone +
fusion) measured in the same run, their ratio (target <= 1.2), throughput, and the share of request
time outside compute (sending inputs, waiting for and receiving features beyond the slowest worker's
compute, (un)packing).

This host has 2 cores for 5 processes: the 4 workers cannot all compute at once, so the CPU floor
column gives the best latency this host allows, max(slowest alone, sum of alone / cores) + fusion,
as a ratio to the critical path. On a fleet (one core or more per device) the floor is 1.

    python benchmarks/runtime_bench.py [--deploy DIR/deploy] [--images 200] [--repeats 3]

Without --deploy it uses (or first builds, in minutes) `edvit demo`'s deployment in a cache folder.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
from pathlib import Path

from vit_ops.runtime import RuntimeConfig, ServeResult, serve_local
from vit_ops.runtime.deployment import open_deployment
from vit_ops.runtime.source import devices_of

TARGET_RATIO = 1.2
CACHE = Path(tempfile.gettempdir()) / "edvit-runtime-bench"


def demo_deployment() -> Path:
    """`edvit demo`'s deployment (4 sub-models on 4 Raspberry Pis), built once into the cache."""
    deploy = CACHE / "deploy"
    if not (deploy / "deployment.json").is_file():
        from vit_ops.demo import run_demo

        print(f"building the digits demo deployment in {CACHE} (minutes) ...", flush=True)
        run_demo(CACHE)
    return deploy


def run_setting(deploy: Path, images: int, repeats: int, threads: int, batch: int
                ) -> list[ServeResult]:
    config = RuntimeConfig(timeout_s=60, threads=threads, batch_size=batch, calibrate=True)
    return [serve_local(deploy, images, config) for _ in range(repeats)]


def _median_spread(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), max(values) - min(values)


def table_row(label: str, results: list[ServeResult]) -> str:
    cores = os.cpu_count() or 1
    latency = _median_spread([r.latency_median_s for r in results])
    critical = _median_spread([r.calibration.critical_path_s for r in results])
    ratio = _median_spread([r.calibration.latency_ratio for r in results])
    floors = []
    for r in results:
        alone = list(r.calibration.alone_latency_s.values())
        floor = max(max(alone), sum(alone) / cores) + r.calibration.fusion_latency_s
        floors.append(floor / r.calibration.critical_path_s)
    floor = statistics.median(floors)
    throughput = _median_spread([r.throughput_images_per_s for r in results])
    comm = _median_spread([r.communication_share for r in results])
    p95 = statistics.median([r.latency_p95_s for r in results])
    verdict = "yes" if ratio[0] <= TARGET_RATIO else "no"
    return (f"{label:<26} {latency[0] * 1e3:>7.3f} ±{latency[1] * 1e3:<6.3f} {p95 * 1e3:>7.3f} "
            f"{critical[0] * 1e3:>8.3f} {ratio[0]:>6.2f} ±{ratio[1]:<5.2f} {floor:>6.2f} "
            f"{verdict:>5} {throughput[0]:>8.1f} ±{throughput[1]:<6.1f} {comm[0]:>5.2f} "
            f"±{comm[1]:<4.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deploy", type=Path, help="deployment directory (default: demo cache)")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    deploy = args.deploy or demo_deployment()
    source = open_deployment(deploy)
    devices = devices_of(source)
    print(f"deployment {deploy}: {len(devices)} workers ({', '.join(devices)}) + aggregator; "
          f"host cores {os.cpu_count()}; {args.images} images x {args.repeats} repeats")
    header = (f"{'setting':<26} {'e2e ms':>7} {'spread':<7} {'p95 ms':>7} {'crit ms':>8} "
              f"{'ratio':>6} {'spread':<6} {'floor':>6} {'<=1.2':>5} {'img/s':>8} {'spread':<7} "
              f"{'comm':>5} {'spread':<5}")
    print(header)
    print("-" * len(header))
    settings = [("1 thread/worker, batch 1", 1, 1), ("1 thread/worker, batch 16", 1, 16)]
    for label, threads, batch in settings:
        results = run_setting(deploy, args.images, args.repeats, threads, batch)
        print(table_row(label, results), flush=True)
        alone = results[-1].calibration.alone_latency_s
        print(f"{'':<26} alone ms: " + ", ".join(f"{d} {s * 1e3:.3f}" for d, s in alone.items())
              + f"; fusion {results[-1].calibration.fusion_latency_s * 1e3:.3f}; threads: "
              f"aggregator {results[-1].threads.aggregator_threads}, workers "
              f"{sorted(set(results[-1].threads.worker_threads.values()))}, inter-op "
              f"{sorted(set(results[-1].threads.worker_interop_threads.values()))}")
    print(f"target: e2e / (slowest sub-model alone + fusion) <= {TARGET_RATIO}; 'floor' = the "
          f"best ratio {os.cpu_count()} cores allow for these sub-models")


if __name__ == "__main__":
    main()
