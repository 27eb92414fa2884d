"""Typed settings and results of a distributed run, and the error a failed device raises.

`RuntimeConfig` is what the aggregator and the workers agree on (timeout, threads, batch size,
degraded mode). `ServeResult` is what a run returns: the predictions of the first N held-out images
in order, which of them were made without some sub-model (degraded mode), per-request latency
(median, p95, p99; seconds), throughput (images per second), the share of the aggregator's time spent
outside compute, the thread settings each process actually ran with, and the devices that failed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from planner.errors import EdvitError
from planner.limits import MAX_THREADS, PositiveSeconds
from planner.schema_base import StrictModel

RESULT_SCHEMA_VERSION = 1
EXIT_DEVICE_FAILED = 4


class RuntimeConfig(StrictModel):
    """How a run behaves; the same object is sent to every process of the fleet."""

    timeout_s: PositiveSeconds = Field(default=30.0,
                                       description="max wait for each answer of a device")
    join_timeout_s: PositiveSeconds | None = Field(
        default=None, description="max wait for every device to load and join "
                                  "(None: timeout_s)")
    threads: int = Field(default=1, ge=1, le=MAX_THREADS,
                         description="torch intra-op threads of each worker")
    aggregator_threads: int = Field(default=1, ge=1, le=MAX_THREADS,
                                    description="threads of the fusion head")
    batch_size: int = Field(default=1, ge=1, le=2**16,
                            description="images per request (1 = latency mode)")
    degraded: bool = Field(default=False,
                           description="keep fusing without a failed device (zeros in its slot)")
    calibrate: bool = Field(default=False,
                            description="time every sub-model alone (one device at a time) first")
    engine: Literal["torch", "onnxruntime"] = Field(
        default="torch", description="what runs each worker's sub-model(s): eager PyTorch, or "
        "their graph exported to onnxruntime at load (see vit_ops.runtime.engine)")
    input_order: list[str] | Literal["plan", "at-once"] = Field(
        default="plan", description="how each request's input goes out. A list: to the devices "
        "one after another in this order, each once the previous device acknowledged it, so the "
        "aggregator's link carries one transfer at a time (a device that has not acknowledged "
        "within its share of the time left holds up the next send no longer); devices not "
        "listed (a worker on the aggregator's own host) get theirs first, at once. 'plan': in the deployment's planned "
        "order (SendOrders: its own order while a device is down), at once when the plan does "
        "not model the transfer. 'at-once': to every device at once (TCP shares the link)")

    @field_validator("input_order")
    @classmethod
    def _each_device_once(cls, order):
        if isinstance(order, str):
            return order
        repeated = sorted({d for d in order if order.count(d) > 1})
        if repeated:
            raise ValueError(f"device {repeated[0]!r} is listed twice: each device is sent its "
                             f"input once")
        return order

    request_gap_s: float = Field(
        default=0.0, ge=0.0, le=60.0, allow_inf_nan=False,
        description="idle seconds before each request (--images runs): each request then meets "
                    "an idle fleet, the latency a plan predicts, rather than the one before it "
                    "(on a device under a CPU quota, back-to-back requests start on a spent "
                    "quota); 0 = back to back")
    request_jitter_s: float = Field(
        default=0.0, ge=0.0, le=60.0, allow_inf_nan=False,
        description="each request's idle gap also gets a random fraction of this (seeded): on "
                    "devices under a CPU quota requests then start at random phases of its "
                    "period, as independent arrivals do, not locked to where the last one ended "
                    "(the same plan measured 41 and 81 ms in two runs with fixed 50 ms gaps)")
    trace: bool = Field(default=False, description="record when each request's input reached "
                        "each device, and its features came back (ServeResult.trace)")


    @property
    def join_limit_s(self) -> float:
        return self.join_timeout_s if self.join_timeout_s is not None else self.timeout_s


class DeviceFailure(StrictModel):
    """A device that stopped answering (or never joined), and why."""

    device: str
    rank: int
    reason: str
    at_image: int | None = Field(
        default=None, description="index of the first image served without it; None = never joined")


class WorkerInfo(StrictModel):
    """What a worker process reported when it joined."""

    device: str
    rank: int
    host: str
    pid: int
    threads: int = Field(description="torch.get_num_threads() after pinning")
    interop_threads: int
    feature_dim: int
    engine: str = Field(default="torch", description="what runs its sub-model(s)")
    standby_slots: list[int] = Field(default_factory=list,
                                     description="slots whose standby copies it holds")


class ThreadSettings(StrictModel):
    """Threads each process ran with, and the cores of the aggregator's host."""

    aggregator_threads: int
    worker_threads: dict[str, int] = Field(description="device -> intra-op threads")
    worker_interop_threads: dict[str, int]
    aggregator_host_cores: int | None


class Calibration(StrictModel):
    """Each sub-model timed alone (devices one at a time, nothing else running) and the fusion head;
    the critical path an ideal runtime would reach is the slowest device plus the fusion head."""

    alone_latency_s: dict[str, float] = Field(description="device -> median seconds per request")
    fusion_latency_s: float
    critical_path_s: float = Field(description="max(alone_latency_s) + fusion_latency_s")
    latency_ratio: float = Field(description="median end-to-end latency / critical_path_s")
    planned_device_s: dict[str, float] = Field(
        default_factory=dict, description="device -> the plan's predicted seconds for one image on "
        "the device kind it was planned for, where the deployment records it")


class DeviceTrace(StrictModel):
    """One device's part of one request, in seconds from the request's start on the aggregator.
    Worker moments come from its perf_counter: comparable only when it shares the aggregator's
    clock (one host, e.g. an emulated fleet)."""

    input_send_start_s: float = Field(description="the aggregator started sending its input")
    input_sent_s: float = Field(description="the aggregator's send completed (or was "
                                "acknowledged, with input_order)")
    input_arrived_s: float = Field(description="the whole input had arrived on the worker")
    features_ready_s: float = Field(description="the worker had computed its features")
    features_received_s: float = Field(description="the aggregator had received them")
    compute_cpu_s: float = Field(0.0, description="the worker process's CPU time from its "
                                 "input's arrival to its features (under a CPU quota, what the "
                                 "quota charged)")


class RequestTrace(StrictModel):
    """Where one request's time went (seconds from its start)."""

    devices: dict[str, DeviceTrace]
    fusion_start_s: float
    end_s: float


class ServeResult(StrictModel):
    """The outcome of one distributed run."""

    schema_version: Literal[1] = RESULT_SCHEMA_VERSION
    status: Literal["ok", "degraded", "failover"] = Field(
        description="ok: every device served; failover: some failed, and standby copies served "
        "their sub-models in every prediction since; degraded: some prediction lacks one")
    deployment: str
    num_images: int
    batch_size: int
    engine: str = Field(default="torch", description="what ran the workers' sub-models, as they "
                        "reported it ('mixed' when nodes of a fleet were started differently)")
    predictions: list[int] = Field(description="predicted class of the first N held-out images")
    labels: list[int] = Field(description="true class of the same images")
    accuracy: float = Field(description="0..1 over the served images")
    degraded: list[bool] = Field(description="per prediction: made without some sub-model")
    failover: list[bool] = Field(default_factory=list, description="per prediction: a failed "
                                 "device's sub-models ran as standby copies on other devices")
    latency_median_s: float = Field(description="per request: send image -> fused logits")
    latency_p95_s: float
    latency_p99_s: float = Field(description="per request, nearest rank")
    throughput_images_per_s: float
    communication_share: float = Field(
        description="share of request time outside compute: sending the input, waiting for and "
                    "receiving features beyond the slowest worker's compute, (un)packing")
    compute_median_s: float = Field(description="slowest worker's compute per request (median)")
    fusion_median_s: float = Field(description="fusion head incl. assembling its input (median)")
    setup_s: float = Field(description="start, model loading and joining of the fleet")
    threads: ThreadSettings
    workers: list[WorkerInfo]
    failed_devices: list[DeviceFailure] = Field(default_factory=list)
    calibration: Calibration | None = None
    trace: list[RequestTrace] | None = Field(default=None, description="per request, with "
                                              "RuntimeConfig.trace")


class WorkerFailedError(EdvitError):
    """A device of the fleet died, hung or never joined (and degraded mode was off or useless)."""

    exit_code = EXIT_DEVICE_FAILED

    def __init__(self, failures: list[DeviceFailure], completed_images: int = 0) -> None:
        names = ", ".join(f"{f.device} (rank {f.rank}): {f.reason}" for f in failures)
        super().__init__(f"device failed: {names}", field="fleet")
        self.failures = failures
        self.completed_images = completed_images

    def report(self) -> dict:
        """The `--json` object of a failed run."""
        return {"status": "failed", "completed_images": self.completed_images,
                "failed_devices": [f.model_dump() for f in self.failures]}


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (gloo's run long), for a device's reason."""
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else exc.__class__.__name__
