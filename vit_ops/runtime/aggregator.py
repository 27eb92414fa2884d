"""The aggregator (rank 0) in benchmark mode: feeds the first N held-out images, reports the run.

It joins the fleet (`vit_ops.runtime.fleet`), optionally calibrates, then sends the images as
8-bit pixels, `batch_size` per request, to every live worker at once and fuses their features.
A device whose link breaks (its process died) or that does not answer within `timeout_s` of the
request's start (hung) is a `DeviceFailure`, named by device. When standby copies of its
sub-models are placed on live devices, they serve its slots from the request it failed in on
(asked again within another `timeout_s`), and every prediction made so is marked `failover`.
Otherwise, without `degraded` the run stops and `WorkerFailedError` is raised; with it, the failed device's slots of the fusion input stay zero
from then on, their presence-mask bits 0 for a head that takes a mask, and every prediction made
so is marked. (The long-running service,
`vit_ops.runtime.service`, answers HTTP requests over the same fleet instead.)
"""

from __future__ import annotations

import logging
import os
import random
import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from planner.errors import InputError
from planner.progress import ProgressCallback
from vit_ops.runtime.fleet import ExitStatus, Fleet
from vit_ops.runtime.rendezvous import close_fleet
from vit_ops.runtime.results import (
    Calibration,
    DeviceFailure,
    RequestTrace,
    RuntimeConfig,
    ServeResult,
    ThreadSettings,
    WorkerFailedError,
    WorkerInfo,
)
from vit_ops.runtime.source import DeploymentSource, feature_width
from vit_ops.runtime.transform import eval_transform
from vit_ops.timing import measure_latency, nearest_rank_percentile, pin_threads

log = logging.getLogger(__name__)


@dataclass
class _Marks:
    """Per prediction: made without some sub-model, or with standby copies."""

    degraded: list[bool] = field(default_factory=list)
    failover: list[bool] = field(default_factory=list)


@dataclass
class _Timings:
    latency_s: list[float] = field(default_factory=list)
    compute_s: list[float] = field(default_factory=list)
    fusion_s: list[float] = field(default_factory=list)
    trace: list[RequestTrace] = field(default_factory=list)


def serve_aggregator(source: DeploymentSource, store: dist.Store, config: RuntimeConfig,
                     num_images: int, progress: ProgressCallback | None = None,
                     exit_status: ExitStatus | None = None) -> ServeResult:
    """Run rank 0 of the fleet on the first `num_images` held-out images (see module docstring).

    `store` is the fleet's store (`rendezvous.open_store` at rank 0); `exit_status(rank)` says how a
    local worker process ended, if it did, to name the cause of a failure.
    """
    if num_images < 1:
        raise InputError("must be >= 1", field="--images", value=num_images)
    try:
        images, labels = source.eval_images(num_images)
        pixels = eval_transform(source).quantize(images)
        fleet = Fleet(source, store, config, exit_status)
    except BaseException:  # let waiting workers go at once, then report the cause
        close_fleet(store, "the aggregator could not start")
        raise
    previous_threads = torch.get_num_threads()
    setup_start = time.perf_counter()
    pin_threads(config.aggregator_threads, interop=False)
    fleet.start()
    try:
        never_joined = fleet.wait_joined(config.join_limit_s)
        if len(never_joined) == len(fleet.devices) or (fleet.uncovered() and
                                                        not config.degraded):
            raise WorkerFailedError(never_joined)
        joined = {w.rank: w for w in fleet.workers()}
        setup_s = time.perf_counter() - setup_start
        calibration = _calibrate(fleet, config, pixels) if config.calibrate else None
        predictions, marks, failures, timings, wall_s = _serve(
            fleet, config, pixels, never_joined, progress)
    finally:
        fleet.close()
        torch.set_num_threads(previous_threads)
    return _result(source, config, images, labels, predictions, marks, timings, wall_s,
                   setup_s, joined, failures, calibration)


def _calibrate(fleet: Fleet, config: RuntimeConfig, pixels: torch.Tensor) -> Calibration:
    """Each worker times its extractor alone (the others idle), then the fusion head here."""
    batch = min(config.batch_size, int(pixels.shape[0]))
    alone = fleet.calibrate(batch)
    _check(fleet, config, [], 0)
    example = torch.zeros(batch, fleet.total_width)
    fusion_s = measure_latency(fleet.fusion, example, threads=config.aggregator_threads).median_s
    return Calibration(alone_latency_s=alone, fusion_latency_s=fusion_s,
                       critical_path_s=max(alone.values()) + fusion_s, latency_ratio=float("nan"))


def request_gaps(config: RuntimeConfig):
    """The idle seconds before each request: `request_gap_s` plus a random fraction of
    `request_jitter_s`, from a fixed seed (the same run, the same gaps)."""
    rng = random.Random(0)
    while True:
        yield config.request_gap_s + rng.random() * config.request_jitter_s


def _serve(fleet: Fleet, config: RuntimeConfig, pixels: torch.Tensor,
           never_joined: list[DeviceFailure], progress: ProgressCallback | None):
    """Every request in order: predictions, degraded and failover marks, failures (with the
    first image served without each device), timings and the wall time."""
    predictions: list[int] = []
    marks = _Marks()
    failures = list(never_joined)
    timings = _Timings()
    total = int(pixels.shape[0])
    gaps = request_gaps(config)
    start_all = time.perf_counter()
    for start in range(0, total, config.batch_size):
        batch = pixels[start:start + config.batch_size].contiguous()
        gap = next(gaps)
        if gap:
            time.sleep(gap)
        deadline = time.monotonic() + config.timeout_s
        answer = fleet.infer(batch, deadline, deadline + config.timeout_s)
        known = {f.device for f in failures}
        failures += [f.model_copy(update={"at_image": start}) for f in fleet.failures
                     if f.device not in known]
        _check(fleet, config, failures, len(predictions))
        predictions.extend(int(p) for p in answer.logits.argmax(dim=-1))
        marks.degraded.extend([answer.degraded] * batch.shape[0])
        marks.failover.extend([answer.failover] * batch.shape[0])
        timings.latency_s.append(answer.elapsed_s)
        timings.compute_s.append(max(answer.device_s.values()))
        timings.fusion_s.append(answer.fusion_s)
        if config.trace and answer.trace is not None:
            timings.trace.append(answer.trace)
        if progress:
            progress(len(predictions), total, "degraded" if answer.degraded else
                     "failover" if answer.failover else "")
    return predictions, marks, failures, timings, time.perf_counter() - start_all


def _check(fleet: Fleet, config: RuntimeConfig, failures: list[DeviceFailure],
           served: int) -> None:
    """Stop the run on a failure that standby copies do not cover, unless degraded mode may go
    on (some device still answers)."""
    uncovered = fleet.uncovered()
    if uncovered and (not config.degraded or len(fleet.missing()) == len(fleet.devices)):
        raise WorkerFailedError(failures or uncovered, completed_images=served)


def _result(source: DeploymentSource, config: RuntimeConfig, images: torch.Tensor,
            labels: torch.Tensor, predictions: list[int], marks: _Marks, timings: _Timings,
            wall_s: float, setup_s: float, joined: dict[int, WorkerInfo],
            failures: list[DeviceFailure], calibration: Calibration | None) -> ServeResult:
    latency = sorted(timings.latency_s)
    median_s = statistics.median(latency)
    outside = sum(max(t - c - f, 0.0) for t, c, f in
                  zip(timings.latency_s, timings.compute_s, timings.fusion_s))
    if calibration is not None:
        planned = source.planned_device_s() if hasattr(source, "planned_device_s") else {}
        calibration = calibration.model_copy(
            update={"latency_ratio": median_s / calibration.critical_path_s,
                    "planned_device_s": planned})
    label_list = [int(v) for v in labels]
    workers = [joined[rank] for rank in sorted(joined)]
    return ServeResult(
        status="ok" if not failures else "degraded" if any(marks.degraded) or not any(
            marks.failover) else "failover",
        deployment=source.name,
        num_images=len(predictions),
        batch_size=config.batch_size,
        engine=_engine_of(workers, config.engine),
        predictions=predictions,
        labels=label_list,
        accuracy=sum(p == t for p, t in zip(predictions, label_list)) / len(predictions),
        degraded=marks.degraded,
        failover=marks.failover,
        latency_median_s=median_s,
        latency_p95_s=nearest_rank_percentile(latency, 0.95),
        latency_p99_s=nearest_rank_percentile(latency, 0.99),
        throughput_images_per_s=len(predictions) / wall_s,
        communication_share=outside / sum(timings.latency_s),
        compute_median_s=statistics.median(timings.compute_s),
        fusion_median_s=statistics.median(timings.fusion_s),
        setup_s=setup_s,
        threads=ThreadSettings(
            aggregator_threads=config.aggregator_threads,
            worker_threads={w.device: w.threads for w in workers},
            worker_interop_threads={w.device: w.interop_threads for w in workers},
            aggregator_host_cores=os.cpu_count()),
        workers=workers,
        failed_devices=failures,
        calibration=calibration,
        trace=timings.trace if config.trace else None,
    )


def _engine_of(workers: list[WorkerInfo], default: str) -> str:
    engines = {w.engine for w in workers}
    return engines.pop() if len(engines) == 1 else ("mixed" if engines else default)
