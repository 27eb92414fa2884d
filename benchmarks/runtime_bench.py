"""Runtime benchmark: 4 local workers + the aggregator, on the digits deployment and on a ViT-B split.

Settings: the digits deployment (`edvit demo`: sub-models of about 0.5 ms) at batch 1 and 16, and a
`SyntheticDeployment` of four random-weight ViT-B/16 sub-models at keep ratio 0.25 (ED-ViT's
scale: tens of milliseconds each) at batch 1; both at batch 1 also with the workers' onnxruntime
engine ("ORT"; the alone timings then use it too). For each setting the fleet is started, every sub-model is first timed alone (one device at a time,
the others idle, torch.utils.benchmark with the worker's threads pinned) and the fusion head on the
aggregator, then N held-out images are served. Columns (medians over repeats, spread = max - min):
end-to-end latency per request (median of the run), the critical path (slowest sub-model alone +
fusion) measured in the same run, the slowest worker's compute inside the run (above "alone" when
workers share cores or run cold), the overhead e2e - critical path, their ratio (target <= 1.2),
throughput, and the share of request time outside compute (sending inputs, waiting for and
receiving features beyond the slowest worker's compute, (un)packing).

This host has 2 cores for 5 processes: the 4 workers cannot all compute at once, so the CPU floor
column gives the best latency this host allows, max(slowest alone, sum of alone / cores) + fusion,
as a ratio to the critical path. On a fleet (one core or more per device) the floor is 1.

    python benchmarks/runtime_bench.py [--deploy DIR/deploy] [--images 200] [--vit-images 40]
                                       [--repeats 3] [--skip-vit]

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
from vit_ops.runtime.source import DeploymentSource, devices_of
from vit_ops.runtime.synthetic import SyntheticDeployment

TARGET_RATIO = 1.2
CACHE = Path(tempfile.gettempdir()) / "edvit-runtime-bench"


def demo_deployment() -> Path:
    """`edvit demo`'s deployment (4 sub-models on 4 Raspberry Pis), built once into the cache."""
    deploy = CACHE / "deploy"
    if not (deploy / "deployment.json").is_file():
        from vit_ops.cli import run_demo

        print(f"building the digits demo deployment in {CACHE} (minutes) ...", flush=True)
        run_demo(CACHE)
    return deploy


def run_setting(source: DeploymentSource, images: int, repeats: int, threads: int, batch: int,
                engine: str) -> list[ServeResult]:
    config = RuntimeConfig(timeout_s=120, threads=threads, batch_size=batch, calibrate=True,
                           engine=engine)
    return [serve_local(source, images, config) for _ in range(repeats)]


def _median_spread(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), max(values) - min(values)


def table_row(label: str, results: list[ServeResult]) -> str:
    cores = os.cpu_count() or 1
    latency = _median_spread([r.latency_median_s for r in results])
    critical = _median_spread([r.calibration.critical_path_s for r in results])
    ratio = _median_spread([r.calibration.latency_ratio for r in results])
    in_run = statistics.median([r.compute_median_s for r in results])
    overhead = statistics.median([r.latency_median_s - r.calibration.critical_path_s
                                  for r in results])
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
    return (f"{label:<26} {latency[0] * 1e3:>8.3f} ±{latency[1] * 1e3:<6.3f} {p95 * 1e3:>8.3f} "
            f"{critical[0] * 1e3:>8.3f} {in_run * 1e3:>8.3f} {overhead * 1e3:>8.3f} "
            f"{ratio[0]:>6.2f} ±{ratio[1]:<5.2f} {floor:>6.2f} "
            f"{verdict:>5} {throughput[0]:>8.1f} ±{throughput[1]:<6.1f} {comm[0]:>5.2f} "
            f"±{comm[1]:<4.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deploy", type=Path, help="deployment directory (default: demo cache)")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--vit-images", type=int, default=40,
                        help="images served per repeat in the ViT-B setting")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-vit", action="store_true", help="only the digits settings")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    deploy = args.deploy or demo_deployment()
    digits = open_deployment(deploy)
    vit_b = SyntheticDeployment(arch="vit_base_patch16_224", keep_ratio=0.25, devices=4)
    print(f"digits deployment {deploy}: {len(devices_of(digits))} workers + aggregator, "
          f"{args.images} images; {vit_b.name}: {args.vit_images} images; host cores "
          f"{os.cpu_count()}; {args.repeats} repeats")
    header = (f"{'setting':<26} {'e2e ms':>8} {'spread':<7} {'p95 ms':>8} {'crit ms':>8} "
              f"{'in-run':>8} {'overhd':>8} {'ratio':>6} {'spread':<6} {'floor':>6} {'<=1.2':>5} "
              f"{'img/s':>8} {'spread':<7} {'comm':>5} {'spread':<5}")
    print(header)
    print("-" * len(header))
    settings = [("digits, batch 1", digits, args.images, 1, "torch"),
                ("digits, batch 16", digits, args.images, 16, "torch"),
                ("digits, batch 1, ORT", digits, args.images, 1, "onnxruntime")]
    if not args.skip_vit:
        settings += [("ViT-B r=0.25, batch 1", vit_b, args.vit_images, 1, "torch"),
                     ("ViT-B r=0.25, batch 1, ORT", vit_b, args.vit_images, 1, "onnxruntime")]
    threads = 1
    for label, source, images, batch, engine in settings:
        results = run_setting(source, images, args.repeats, threads, batch, engine)
        print(table_row(label, results), flush=True)
        alone = results[-1].calibration.alone_latency_s
        print(f"{'':<26} alone ms: " + ", ".join(f"{d} {s * 1e3:.3f}" for d, s in alone.items())
              + f"; fusion {results[-1].calibration.fusion_latency_s * 1e3:.3f}; threads: "
              f"aggregator {results[-1].threads.aggregator_threads}, workers "
              f"{sorted(set(results[-1].threads.worker_threads.values()))}, inter-op "
              f"{sorted(set(results[-1].threads.worker_interop_threads.values()))}; ratio per "
              f"run: " + " ".join(f"{r.calibration.latency_ratio:.2f}" for r in results))
    print(f"1 intra-op thread per worker and on the aggregator. target: e2e / (slowest sub-model "
          f"alone + fusion) <= {TARGET_RATIO}; 'in-run' = slowest worker's compute inside the "
          f"run; 'overhd' = e2e - crit; 'floor' = the best ratio {os.cpu_count()} cores allow for "
          f"these sub-models")


if __name__ == "__main__":
    main()
