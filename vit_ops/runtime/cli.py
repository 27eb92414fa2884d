"""`edvit serve DEPLOY_DIR --local` and `edvit worker DEPLOY_DIR`: run a deployment as distributed
inference over torch.distributed (gloo), one process per device plus the aggregator (rank 0).

`serve --local` starts the whole fleet on this machine. On real devices every device runs
`edvit worker` (rank 0 = the aggregator, rank r = the r-th device of deployment.json), with
`--rank/--world-size/--master` or torchrun's RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT.
A device that fails is named on stderr and the exit code is 4 (unless `--degraded` goes on).

With `--http [HOST:]PORT` the aggregator is a long-running service instead (Open Inference
Protocol v2 over HTTP, bound to 127.0.0.1 unless HOST says otherwise) that answers new images
until SIGTERM or SIGINT; workers that die rejoin it when restarted (`--local` restarts them).
`edvit classify IMAGE... --url http://HOST:PORT` asks such a service; `--deploy DEPLOY_DIR`
classifies in this one process, the reference the service must equal.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from pydantic import ValidationError

from planner.cli.common import Command, print_json, progress_bar
from planner.cli.parser import thread_count
from planner.errors import InputError
from planner.limits import ascii_count
from planner.validation import raise_validation_error
from vit_ops.runtime import (Endpoint, RuntimeConfig, WorkerFailedError, run_node, run_node_http,
                             serve_local, serve_local_http)
from vit_ops.runtime.deployment import open_deployment
from vit_ops.runtime.reference import ReferenceClassifier
from vit_ops.runtime.service import ServiceConfig
from vit_ops.runtime.synthetic import PlanSyntheticDeployment

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


def add_classify_arguments(classify: argparse.ArgumentParser) -> None:
    classify.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG or PNG files")
    where = classify.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a service started with --http: http://HOST:PORT")
    where.add_argument("--deploy", metavar="DEPLOY_DIR",
                       help="classify in this process (the single-process reference)")
    classify.add_argument("--top", type=int, default=5, metavar="K",
                          help="most probable classes listed per image (default 5)")
    classify.add_argument("--timeout", type=float, default=60.0, metavar="S",
                          help="seconds to wait for each answer of the service (default 60)")
    classify.add_argument("--json", action="store_true",
                          help="print a JSON list: {file, label, class_id, top, degraded, failover, "
                               "standby_devices} each")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=100, metavar="N",
                        help="serve the first N held-out images (aggregator; default 100)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="S",
                        help="seconds a device may take to answer a request (default 30)")
    parser.add_argument("--join-timeout", type=float, metavar="S",
                        help="seconds every device may take to load and join (default: --timeout)")
    parser.add_argument("--threads", type=thread_count, default=1, metavar="T",
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
    parser.add_argument("--synthetic", action="store_true",
                        help="DEPLOY_DIR is a plan file (edvit plan --out): serve random-weight "
                             "sub-models of its shapes, random images (timing only)")
    parser.add_argument("--input-order", metavar="plan|at-once|DEV1,DEV2,...", default="plan",
                        help="how each input goes out: 'plan' (default) in the deployment's "
                             "planned order, one device after another (at once when the plan "
                             "does not model the transfer); 'at-once' to every device at once; "
                             "or to the devices listed one after another, after those not named")
    parser.add_argument("--request-gap", type=float, default=0.0, metavar="S",
                        help="with --images: idle S seconds before each request, so each meets "
                             "an idle fleet (default 0: back to back)")
    parser.add_argument("--request-jitter", type=float, default=0.0, metavar="S",
                        help="with --images: add a random 0-S seconds to each gap (seeded), so "
                             "requests start at random phases of a CPU quota's period, as "
                             "independent arrivals do (default 0)")
    parser.add_argument("--trace", action="store_true",
                        help="record per request when each device got its input and answered "
                             "(in --json)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    http = parser.add_argument_group("service (aggregator with --http)")
    http.add_argument("--http", metavar="[HOST:]PORT",
                      help="serve HTTP (Open Inference Protocol v2) until SIGTERM/SIGINT instead "
                           "of a benchmark run; HOST defaults to 127.0.0.1, PORT 0 picks one")
    http.add_argument("--max-batch", type=int, default=1, metavar="N",
                      help="images per fleet request: batch waiting requests (default 1)")
    http.add_argument("--max-wait-ms", type=float, default=0.0, metavar="MS",
                      help="wait this long for more requests to batch (default 0)")
    http.add_argument("--queue", type=int, default=64, metavar="N",
                      help="requests waiting at most; more get 503 + Retry-After (default 64)")
    http.add_argument("--max-body", type=int, default=8 * 2**20, metavar="BYTES",
                      help="largest request body (default 8 MiB)")
    http.add_argument("--restarts", type=int, default=5, metavar="N",
                      help="--local: restarts of a dead worker within --restart-window "
                           "(default 5); past them it is tried again once the oldest left "
                           "the window")
    http.add_argument("--restart-window", type=float, default=300.0, metavar="S",
                      help="--local: the window of --restarts, seconds (default 300)")


def _config(args: argparse.Namespace) -> RuntimeConfig:
    if args.images < 1:
        raise InputError("must be >= 1", field="--images", value=args.images)
    order = (args.input_order if args.input_order in ("plan", "at-once")
             else [d.strip() for d in args.input_order.split(",")])
    try:
        return RuntimeConfig(timeout_s=args.timeout, join_timeout_s=args.join_timeout,
                             threads=args.threads, batch_size=args.batch_size,
                             degraded=args.degraded, calibrate=args.calibrate,
                             engine=args.engine, input_order=order, trace=args.trace,
                             request_gap_s=args.request_gap,
                             request_jitter_s=args.request_jitter)
    except ValidationError as exc:
        raise_validation_error(exc, "command line")


def _source(args: argparse.Namespace):
    if args.synthetic:
        return PlanSyntheticDeployment(args.deploy_dir)
    return open_deployment(args.deploy_dir, args.data)


def _service_config(args: argparse.Namespace):
    host, port = _http_address(args.http)
    flags = {"max_batch": ("--max-batch", args.max_batch), "queue_size": ("--queue", args.queue),
             "max_wait_ms": ("--max-wait-ms", args.max_wait_ms),
             "max_body_bytes": ("--max-body", args.max_body),
             "max_restarts": ("--restarts", args.restarts),
             "restart_window_s": ("--restart-window", args.restart_window)}
    try:
        return ServiceConfig(host=host, port=port, **{k: v for k, (_, v) in flags.items()})
    except ValidationError as exc:  # the ranges are ServiceConfig's; name the flag
        error = exc.errors()[0]
        flag, value = flags.get(str(error["loc"][0]) if error["loc"] else "", ("--http", args.http))
        raise InputError(error["msg"], field=flag, value=value) from None


def _http_address(text: str) -> tuple[str, int]:
    """`PORT`, `HOST:PORT` or `[IPV6]:PORT` -> (host, port); the host defaults to loopback."""
    port = ascii_count(text, 5)
    if port is not None:
        if port > 65535:
            raise InputError("port must be 0..65535", field="--http", value=text)
        return "127.0.0.1", port
    endpoint = Endpoint.parse(text, field="--http", any_port=True)
    return endpoint.host, endpoint.port


def _exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the launcher still kills its workers."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def run_serve(args: argparse.Namespace) -> int:
    config = _config(args)
    service = _service_config(args) if args.http is not None else None
    source = _source(args)
    if service is not None:
        return serve_local_http(source, config, service)
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
    service = None
    if args.http is not None:
        if rank != 0:
            raise InputError("only the aggregator (rank 0) serves HTTP", field="--http",
                             value=args.http)
        service = _service_config(args)
    source = _source(args)
    if service is not None:
        return run_node_http(source, world_size, endpoint, config, service)
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
        f" median {result.latency_median_s * 1e3:.2f} ms, p95 {result.latency_p95_s * 1e3:.2f} ms,"
        f" p99 {result.latency_p99_s * 1e3:.2f} ms;"
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
        marked = "failover (standby copies served it)" if result.status == "failover" \
            else "degraded"
        lines.append(f"  FAILED {failure.device} (rank {failure.rank}): {failure.reason}; "
                     f"predictions from image {failure.at_image or 0} on are marked {marked}")
    return "\n".join(lines)


def run_classify(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise InputError("must be >= 1", field="--top", value=args.top)
    files = [Path(f) for f in args.images]
    for path in files:
        if not path.is_file():
            raise InputError("a directory, not an image file" if path.is_dir() else
                             "image file not found" if not path.exists() else
                             "not a regular file (a FIFO or device?)", file=str(path))
    if args.url is not None:
        from vit_ops.runtime.client import Client  # httpx: the `serve` extra, only for --url

        with Client(args.url, timeout_s=args.timeout, top_k=args.top) as client:
            answers = [client.classify(path) for path in files]
    else:
        classifier = ReferenceClassifier(args.deploy, top_k=args.top)
        answers = classifier.classify_files(files)
    rows = [{"file": str(path), "label": a.label, "class_id": a.class_id,
             "top": [t.model_dump() for t in a.top], "degraded": a.degraded,
             "failover": a.failover, "standby_devices": a.standby_devices}
            for path, a in zip(files, answers)]
    if args.json:
        print_json(rows)
        return 0
    for row in rows:
        mark = "  (degraded)" if row["degraded"] else "  (failover)" if row["failover"] else ""
        print(f"{row['file']}: {row['label']} ({row['top'][0]['prob']:.3f}){mark}")
    return 0


COMMANDS = {
    "serve": Command(add_serve_arguments, run_serve, description=__doc__, raw_description=True),
    "worker": Command(add_worker_arguments, run_worker, description=__doc__,
                      raw_description=True),
    "classify": Command(add_classify_arguments, run_classify, description=__doc__,
                        raw_description=True),
}
