"""`edvit serve DEPLOY_DIR --local` and `edvit worker DEPLOY_DIR`: run a deployment as distributed
inference over torch.distributed (gloo), one process per device plus the aggregator (rank 0).

`serve --local` starts the whole fleet on this machine. On real devices every device runs
`edvit worker` (rank 0 = the aggregator, rank r = the r-th device of deployment.json), with
`--rank/--world-size/--master` or torchrun's RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT.
A device that fails is named on stderr and the exit code is 4 (unless `--degraded` goes on).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from planner.cli.common import Command, print_json, progress_bar
from planner.errors import InputError
from vit_ops.runtime import Endpoint, RuntimeConfig, WorkerFailedError, run_node, serve_local
from vit_ops.runtime.deployment import open_deployment

PREDICTIONS_SHOWN = 20


def add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("deploy_dir", metavar="DEPLOY_DIR")
    serve.add_argument("--local", action="store_true", required=True,
                       help="start every device's worker on this machine (gloo over loopback)")
    _add_run_arguments(serve)


def add_worker_arguments(worker: argparse.ArgumentParser) -> None:
    worker.add_argument("deploy_dir", metavar="DEPLOY_DIR")
    worker.add_argument("--rank", type=int, help="0 = aggregator, r = r-th device (env RANK)")
    worker.add_argument("--world-size", type=int,
                        help="1 + number of devices (env WORLD_SIZE)")
    worker.add_argument("--master", metavar="HOST:PORT",
                        help="the aggregator's address (env MASTER_ADDR, MASTER_PORT)")
    _add_run_arguments(worker)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=100, metavar="N",
                        help="serve the first N held-out images (aggregator; default 100)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="S",
                        help="seconds a device may take to answer a request (default 30)")
    parser.add_argument("--join-timeout", type=float, metavar="S",
                        help="seconds every device may take to load and join (default: --timeout)")
    parser.add_argument("--threads", type=int, default=1, metavar="T",
                        help="torch threads per worker process (default 1)")
    parser.add_argument("--batch-size", type=int, default=1, metavar="B",
                        help="images per request (default 1: latency per image)")
    parser.add_argument("--engine", choices=["torch", "onnxruntime"], default="torch",
                        help="what runs each worker's sub-model(s): eager PyTorch (default) or "
                             "their graph exported to onnxruntime at load (checked against it)")
    parser.add_argument("--degraded", action="store_true",
                        help="go on without a failed device (zeros in its slot), marking "
                             "every prediction made so")
    parser.add_argument("--calibrate", action="store_true",
                        help="first time each sub-model alone, one device at a time, to report "
                             "latency against the critical path")
    parser.add_argument("--data", help="data of the held-out images (default: the deployment's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _config(args: argparse.Namespace) -> RuntimeConfig:
    for flag, value in (("--images", args.images), ("--threads", args.threads),
                        ("--batch-size", args.batch_size)):
        if value < 1:
            raise InputError("must be >= 1", field=flag, value=value)
    if not args.timeout > 0:
        raise InputError("must be > 0", field="--timeout", value=args.timeout)
    if args.join_timeout is not None and not args.join_timeout > 0:
        raise InputError("must be > 0", field="--join-timeout", value=args.join_timeout)
    return RuntimeConfig(timeout_s=args.timeout, join_timeout_s=args.join_timeout,
                         threads=args.threads, batch_size=args.batch_size,
                         degraded=args.degraded, calibrate=args.calibrate,
                         engine=args.engine)


def _exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the launcher still kills its workers."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def run_serve(args: argparse.Namespace) -> int:
    config = _config(args)
    source = open_deployment(args.deploy_dir, args.data)
    _exit_on_sigterm()
    try:
        with progress_bar("serve", enabled=not args.json) as progress:
            result = serve_local(source, args.images, config, progress)
    except WorkerFailedError as exc:
        if args.json:
            print_json(exc.report())
        raise
    _report(result, args.json)
    return 0


def run_worker(args: argparse.Namespace) -> int:
    config = _config(args)
    rank = _int_from(args.rank, "RANK", "--rank")
    world_size = _int_from(args.world_size, "WORLD_SIZE", "--world-size")
    endpoint = _endpoint(args.master)
    source = open_deployment(args.deploy_dir, args.data)
    _exit_on_sigterm()
    try:
        with progress_bar("serve", enabled=rank == 0 and not args.json) as progress:
            outcome = run_node(source, rank, world_size, endpoint, config, args.images, progress)
    except WorkerFailedError as exc:
        if args.json:
            print_json(exc.report())
        raise
    if isinstance(outcome, int):
        return outcome
    _report(outcome, args.json)
    return 0


def _int_from(value: int | None, env: str, flag: str) -> int:
    if value is not None:
        return value
    text = os.environ.get(env)
    if text is None:
        raise InputError(f"give {flag} or set {env}", field=flag)
    try:
        return int(text)
    except ValueError:
        raise InputError("not an integer", field=env, value=text) from None


def _endpoint(master: str | None) -> Endpoint:
    if master:
        return Endpoint.parse(master)
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not host or not port:
        raise InputError("give --master HOST:PORT or set MASTER_ADDR and MASTER_PORT",
                         field="--master")
    return Endpoint.parse(f"{host}:{port}", field="MASTER_ADDR/MASTER_PORT")


def _report(result, as_json: bool) -> None:
    if as_json:
        print_json(result.model_dump(mode="json"))
        return
    print(format_result(result))


def _alone_text(device: str, alone_s: float, planned_s: float | None) -> str:
    planned = f" ({planned_s * 1e3:.2f})" if planned_s is not None else ""
    return f"{device} {alone_s * 1e3:.2f}{planned}"


def format_result(result) -> str:
    """A short human-readable summary of a `ServeResult`."""
    shown = " ".join(str(p) for p in result.predictions[:PREDICTIONS_SHOWN])
    more = " ..." if result.num_images > PREDICTIONS_SHOWN else ""
    workers = result.threads.worker_threads
    lines = [
        f"served {result.num_images} images on {len(result.workers)} devices + aggregator "
        f"({result.status}): accuracy {result.accuracy:.4f}",
        f"  predictions: {shown}{more}",
        f"  latency per request ({result.batch_size} image{'s' if result.batch_size > 1 else ''}):"
        f" median {result.latency_median_s * 1e3:.2f} ms, p95 {result.latency_p95_s * 1e3:.2f} ms;"
        f" throughput {result.throughput_images_per_s:.1f} images/s",
        f"  communication share {result.communication_share:.2f} (slowest worker's compute "
        f"{result.compute_median_s * 1e3:.2f} ms, fusion {result.fusion_median_s * 1e3:.2f} ms)",
        f"  engine {result.engine}; threads: aggregator {result.threads.aggregator_threads}, workers "
        + ", ".join(f"{d}={t}" for d, t in workers.items())
        + f" (this host has {result.threads.aggregator_host_cores} cores)",
    ]
    if result.calibration:
        c = result.calibration
        lines.append(f"  critical path (slowest sub-model alone + fusion) {c.critical_path_s * 1e3:.2f}"
                     f" ms; end-to-end / critical path = {c.latency_ratio:.2f}")
        lines.append("  each device alone, ms (the plan's prediction for its device kind): "
                     + ", ".join(_alone_text(d, s, c.planned_device_s.get(d))
                                 for d, s in c.alone_latency_s.items()))
    for failure in result.failed_devices:
        lines.append(f"  FAILED {failure.device} (rank {failure.rank}): {failure.reason}; "
                     f"predictions from image {failure.at_image or 0} on are marked degraded")
    return "\n".join(lines)


COMMANDS = {
    "serve": Command(add_serve_arguments, run_serve, description=__doc__, raw_description=True),
    "worker": Command(add_worker_arguments, run_worker, description=__doc__,
                      raw_description=True),
}
