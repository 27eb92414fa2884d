"""Between HTTP and the fleet: a bounded queue of requests and the one thread that runs them.

HTTP handlers decode images into 8-bit pixels and `submit` them; a full queue refuses at once
(`QueueFullError`: the handler answers 503 with Retry-After), so memory never grows with the load.
One dispatcher thread owns the fleet's links: it takes the oldest request, adds whatever else is
waiting up to `max_batch` images (waiting at most `max_wait_ms` for more: micro-batching), sends
them to every device as one request and hands each caller its rows. The fleet's deadline is the
oldest request's arrival plus most of `timeout_s`, so every request is answered within the
timeout even while a device hangs (a request that waited too long in the queue for that is
refused, `QueuedTooLongError`, rather than sent with a deadline healthy devices would miss): a
device that misses it is dropped, and its slots are asked of the devices holding their standby copies (until `FAILOVER_SHARE` of the timeout), so the answer is
complete and marked `failover`; without copies the answer lacks it, and without degraded mode the
callers get `DevicesUnavailableError` naming it (503). While idle, the
dispatcher pings the devices, so readiness notices a dead or hung device without traffic.

`stop()` drains: requests already queued are still answered, new ones are refused.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
from pydantic import Field

from planner.schema_base import StrictModel
from vit_ops.runtime.fleet import Fleet
from vit_ops.runtime.results import DeviceFailure, RuntimeConfig

log = logging.getLogger(__name__)

DEADLINE_SHARE = 0.85  # of timeout_s for the devices; the rest is fusion, HTTP and scheduling
# A request that waited longer than this share of timeout_s in the queue (behind a request held
# up by a hung device) is refused, not sent: with its deadline that near, healthy devices would
# miss it and be dropped as hung (on CI, two healthy devices went so behind one SIGSTOPped one).
MAX_QUEUE_SHARE = 0.45
FAILOVER_SHARE = 0.95  # of timeout_s: a failed device's slots asked again of their standby copies
PING_INTERVAL_S = 0.5


class ServiceConfig(StrictModel):
    """How the HTTP service behaves (`edvit serve --http`)."""

    host: str = Field(default="127.0.0.1", description="bind address (loopback unless asked)")
    port: int = Field(default=8000, ge=0, lt=65536, description="0: any free port")
    queue_size: int = Field(default=64, ge=1, le=100_000, description="requests waiting at most")
    max_batch: int = Field(default=1, ge=1, le=4096, description="images per fleet request")
    max_wait_ms: float = Field(default=0.0, ge=0, le=60_000, allow_inf_nan=False,
                               description="wait for more images this long")
    max_body_bytes: int = Field(default=8 * 2**20, gt=0, le=2**31,
                                description="largest request body")
    max_image_pixels: int = Field(default=4096 * 4096, gt=0, description="decompression limit")
    max_request_images: int = Field(default=64, ge=1, description="images in one /infer")
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After of a full queue")
    top_k: int = Field(default=5, ge=1)
    max_restarts: int = Field(default=5, ge=0, le=10_000,
                              description="--local: restarts of a dead worker per window")
    restart_window_s: float = Field(default=300.0, gt=0, le=86400, allow_inf_nan=False,
                                    description="--local: the window of max_restarts; a worker "
                                    "that used them is tried again once the oldest left it")


class QueueFullError(Exception):
    """Too many requests are waiting: come back after `retry_after_s`."""


class ServiceClosedError(Exception):
    """The service is shutting down and takes no new requests."""


class QueuedTooLongError(Exception):
    """A request waited so long in the queue that too little of its timeout is left to ask the
    devices."""

    def __init__(self, waited_s: float, timeout_s: float) -> None:
        self.waited_s = waited_s
        super().__init__(f"no answer within {timeout_s:g} s: the request waited {waited_s:.1f} s "
                         "in the queue behind slower requests, too long to ask the devices")


class DevicesUnavailableError(Exception):
    """An answer would lack these devices (and degraded mode is off, or none answered)."""

    def __init__(self, missing: list[DeviceFailure]) -> None:
        self.missing = missing
        names = ", ".join(f"{f.device}: {f.reason}" if f.reason else f.device for f in missing)
        super().__init__(f"devices unavailable: {names}")


@dataclass
class Answer:
    """One request's rows of the fused answer."""

    probabilities: torch.Tensor  # (n, classes), softmax of the fused logits
    degraded: bool
    failed_devices: list[str]
    device_ms: dict[str, float]
    failover: bool = False
    standby_devices: dict[str, list[str]] = field(default_factory=dict)
    queue_s: float = 0.0  # from `submit` to the fleet request that carried these images
    fleet_s: float = 0.0  # the fleet's own time: sending the pixels to the fused logits


@dataclass
class _Job:
    pixels: torch.Tensor  # uint8 (n, C, H, W)
    arrival: float  # time.monotonic()
    future: Future = field(default_factory=Future)

    @property
    def size(self) -> int:
        return int(self.pixels.shape[0])


class InferenceService:
    """The queue and the dispatcher over a started `Fleet` (see the module docstring)."""

    def __init__(self, fleet: Fleet, config: RuntimeConfig, service: ServiceConfig,
                 observe=None) -> None:
        self.fleet, self.config, self.service = fleet, config, service
        self.observe = observe  # called with each fleet answer (metrics)
        self.queue: queue.Queue[_Job | None] = queue.Queue(maxsize=service.queue_size)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="edvit-dispatcher", daemon=True)
        self._held: _Job | None = None  # taken from the queue, not fitting the last batch

    def start(self) -> "InferenceService":
        self._thread.start()
        return self

    def submit(self, pixels: torch.Tensor) -> Future:
        """Queue uint8 images (n, C, H, W); the future gives an `Answer` or raises."""
        if self._closing.is_set():
            raise ServiceClosedError("the service is shutting down")
        job = _Job(pixels=pixels, arrival=time.monotonic())
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise QueueFullError(f"{self.service.queue_size} requests are waiting") from None
        return job.future

    def queued(self) -> int:
        return self.queue.qsize()

    def stop(self) -> None:
        """Refuse new requests, answer the queued ones, end the dispatcher."""
        self._closing.set()
        self.queue.put(None)  # after every queued job
        self._thread.join()

    # ------------------------------------------------------------------ the dispatcher

    def _loop(self) -> None:
        while True:
            job = self._next(PING_INTERVAL_S)
            if job is None:
                if self._closing.is_set():
                    return
                self._ping()
                continue
            jobs = self._gather(job)
            try:
                self._run(jobs)
            except Exception as exc:  # never leave a caller without an answer
                log.exception("request failed")
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)

    def _next(self, timeout_s: float | None) -> _Job | None:
        """The next live job (cancelled ones are skipped), None on the stop mark or timeout."""
        while True:
            if self._held is not None:
                job, self._held = self._held, None
            else:
                try:
                    if timeout_s and not self._closing.is_set():
                        job = self.queue.get(timeout=timeout_s)
                    else:
                        job = self.queue.get_nowait()
                except queue.Empty:
                    return None
            if job is None:
                self._closing.set()
                return None
            if job.future.set_running_or_notify_cancel():
                return job

    def _gather(self, first: _Job) -> list[_Job]:
        """`first` and the jobs waiting behind it, up to max_batch images, waiting at most
        max_wait_ms from `first`'s arrival for more."""
        jobs, images = [first], first.size
        until = first.arrival + self.service.max_wait_ms / 1e3
        while images < self.service.max_batch and not self._closing.is_set():
            remaining = until - time.monotonic()
            job = self._next(remaining if remaining > 0 else None)
            if job is None:
                break
            if images + job.size > self.service.max_batch:
                self._held = job
                break
            jobs.append(job)
            images += job.size
        return jobs

    def _run(self, jobs: list[_Job]) -> None:
        if not self.config.degraded and (missing := self.fleet.uncovered()):
            self._fail(jobs, DevicesUnavailableError(missing))
            return
        jobs = self._in_time(jobs)
        if not jobs:
            return
        arrival = min(j.arrival for j in jobs)
        pixels = jobs[0].pixels if len(jobs) == 1 else torch.cat([j.pixels for j in jobs])
        asked = time.monotonic()
        answer = self.fleet.infer(pixels, arrival + DEADLINE_SHARE * self.config.timeout_s,
                                  arrival + FAILOVER_SHARE * self.config.timeout_s)
        if self.observe is not None:
            self.observe(answer)
        if answer.degraded and (not self.config.degraded or
                                len(answer.unserved_slots) == self.fleet.num_slots):
            self._fail(jobs, DevicesUnavailableError(answer.lacking))
            return
        probabilities = torch.softmax(answer.logits, dim=-1)
        failed = [f.device for f in answer.missing]
        device_ms = {d: s * 1e3 for d, s in answer.device_s.items()}
        start = 0
        for job in jobs:
            rows = probabilities[start:start + job.size]
            start += job.size
            job.future.set_result(Answer(probabilities=rows, degraded=answer.degraded,
                                         failed_devices=failed, device_ms=device_ms,
                                         failover=answer.failover,
                                         standby_devices=answer.standby,
                                         queue_s=asked - job.arrival, fleet_s=answer.elapsed_s))

    def _in_time(self, jobs: list[_Job]) -> list[_Job]:
        """The jobs with enough of their timeout left to ask the devices; the others are
        refused (`QueuedTooLongError`), never sent with a deadline a healthy device would miss."""
        now, timely = time.monotonic(), []
        for job in jobs:
            if now - job.arrival > MAX_QUEUE_SHARE * self.config.timeout_s:
                job.future.set_exception(QueuedTooLongError(now - job.arrival,
                                                            self.config.timeout_s))
            else:
                timely.append(job)
        return timely

    @staticmethod
    def _fail(jobs: list[_Job], exc: Exception) -> None:
        for job in jobs:
            job.future.set_exception(exc)

    def _ping(self) -> None:
        try:
            self.fleet.ping(min(self.config.timeout_s / 2, 5.0))
        except Exception:  # a ping never stops the service
            log.exception("ping failed")
