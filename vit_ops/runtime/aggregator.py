"""The aggregator (rank 0): feeds the images, collects every device's features, runs the fusion head.

For each request it sends the images to every live worker and posts a receive for each worker's
features at once (torch.distributed point-to-point operations, one two-rank gloo group per worker),
then waits for each with the request's deadline (`timeout_s` from the start of the request). A
worker whose link breaks (its process died) or that does not answer in time (hung) is a
`DeviceFailure`, named by device. Without `degraded` the run stops and `WorkerFailedError` is
raised; with it, the failed device's slots of the fusion input stay zero from then on and every
prediction made so is marked.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist

from planner.errors import InputError
from planner.progress import ProgressCallback
from vit_ops.runtime import protocol
from vit_ops.runtime.rendezvous import (
    close_links,
    connect_links,
    post_verdict,
    wait_for_workers,
)
from vit_ops.runtime.results import (
    Calibration,
    DeviceFailure,
    RuntimeConfig,
    ServeResult,
    ThreadSettings,
    WorkerFailedError,
    WorkerInfo,
)
from vit_ops.runtime.source import (
    DeploymentSource,
    device_columns,
    devices_of,
    feature_width,
)
from vit_ops.runtime.timing import median_latency_s, pin_threads

log = logging.getLogger(__name__)

ExitStatus = Callable[[int], "str | None"]
EXIT_STATUS_GRACE_S = 1.0


@dataclass
class _Link:
    """The aggregator's view of one worker."""

    device: str
    rank: int  # the worker's rank in the fleet (device order)
    group_rank: int  # its rank in the process group of the members
    group: dist.ProcessGroup
    columns: torch.Tensor  # fusion-input columns its features fill
    alive: bool = True
    pending: list = field(default_factory=list)  # works abandoned after a failure, kept referenced

    @property
    def width(self) -> int:
        """Feature floats per image it sends."""
        return len(self.columns)


@dataclass
class _Timings:
    latency_s: list[float] = field(default_factory=list)
    compute_s: list[float] = field(default_factory=list)
    fusion_s: list[float] = field(default_factory=list)


def serve_aggregator(source: DeploymentSource, store: dist.Store, config: RuntimeConfig,
                     num_images: int, progress: ProgressCallback | None = None,
                     exit_status: ExitStatus | None = None) -> ServeResult:
    """Run rank 0 of the fleet on the first `num_images` held-out images (see module docstring).

    `store` is the fleet's store (`rendezvous.open_store` at rank 0); `exit_status(rank)` says how a
    local worker process ended, if it did, to name the cause of a failure.
    """
    if num_images < 1:
        raise InputError("must be >= 1", field="--images", value=num_images)
    devices = devices_of(source)
    slots = source.slots()
    try:
        images, labels = source.eval_images(num_images)
        fusion = source.load_fusion().eval()
    except BaseException:  # let waiting workers go at once, then report the cause
        post_verdict(store, None, "the aggregator could not start")
        raise
    previous_threads = torch.get_num_threads()
    setup_start = time.perf_counter()
    pin_threads(config.aggregator_threads, interop=False)
    try:
        joined, failures = wait_for_workers(store, devices, config.join_limit_s, exit_status)
        if not joined or (failures and not config.degraded):
            post_verdict(store, None, "; ".join(f"{f.device}: {f.reason}" for f in failures))
            raise WorkerFailedError(failures)
        members = sorted(joined)
        post_verdict(store, members)
        links = _connect(store, members, devices, slots, config, exit_status)
        setup_s = time.perf_counter() - setup_start
        run = _Run(links, fusion, feature_width(slots), config, exit_status, failures)
        run.send_header(images)
        calibration = run.calibrate(images) if config.calibrate else None
        predictions, degraded, timings, wall_s = run.serve(images, progress)
        run.dismiss()
    finally:
        close_links()
        torch.set_num_threads(previous_threads)
    return _result(source, config, images, labels, predictions, degraded, timings, wall_s,
                   setup_s, joined, run.failures, calibration)


def _connect(store: dist.Store, members: list[int], devices: list[str], slots, config,
             exit_status: ExitStatus | None) -> list[_Link]:
    """Join the process group of the members; a member lost in between fails the setup, named."""
    columns = device_columns(slots)
    try:
        groups = connect_links(store, 0, len(members) + 1, config.timeout_s)
    except (RuntimeError, dist.DistError) as exc:
        failures = []
        for rank in members:
            status = exit_status(rank) if exit_status else None
            reason = f"process {status}" if status else f"process group setup failed ({exc})"
            failures.append(DeviceFailure(device=devices[rank - 1], rank=rank,
                                          reason=reason[:300]))
        raise WorkerFailedError(failures) from None
    return [_Link(device=devices[rank - 1], rank=rank, group_rank=i + 1, group=groups[i + 1],
                  columns=columns[devices[rank - 1]])
            for i, rank in enumerate(members)]


class _Run:
    """One run over established links: header, calibration, requests, bye."""

    def __init__(self, links: list[_Link], fusion: torch.nn.Module, total_width: int,
                 config: RuntimeConfig, exit_status: ExitStatus | None,
                 failures: list[DeviceFailure]) -> None:
        self.links = links
        self.fusion = fusion
        self.total_width = total_width
        self.config = config
        self.exit_status = exit_status
        self.failures = list(failures)  # devices that never joined (degraded mode)
        self.served = 0
        # every device's features fill one block of columns, in link order: replies concatenate
        columns = [int(c) for link in links for c in link.columns]
        self.columns_in_order = columns == list(range(total_width))

    def live(self) -> list[_Link]:
        return [link for link in self.links if link.alive]

    def send_header(self, images: torch.Tensor) -> None:
        header = protocol.Header(num_images=int(images.shape[0]),
                                 batch_size=self.config.batch_size,
                                 image_shape=tuple(images.shape[1:]),
                                 calibrate=self.config.calibrate)
        message = header.to_tensor()
        deadline = time.monotonic() + self.config.timeout_s
        works = [(link, dist.isend(message, dst=link.group_rank, group=link.group))
                 for link in self.live()]
        for link, work in works:
            self._wait(link, work, deadline)
        self._check_failures()

    def calibrate(self, images: torch.Tensor) -> Calibration:
        """Each worker times its extractor alone (the others idle), then the fusion head here."""
        alone: dict[str, float] = {}
        for link in self.live():
            deadline = time.monotonic() + self.config.timeout_s
            answer = torch.zeros(1, dtype=torch.float64)
            send = dist.isend(torch.ones(1, dtype=torch.int64), dst=link.group_rank,
                              group=link.group)
            recv = dist.irecv(answer, src=link.group_rank, group=link.group)
            if self._wait(link, send, deadline) and self._wait(link, recv, deadline):
                alone[link.device] = float(answer)
        self._check_failures()
        example = torch.zeros(min(self.config.batch_size, images.shape[0]), self.total_width)
        fusion_s = median_latency_s(self.fusion, example, self.config.aggregator_threads)
        critical = max(alone.values()) + fusion_s
        return Calibration(alone_latency_s=alone, fusion_latency_s=fusion_s,
                           critical_path_s=critical, latency_ratio=float("nan"))

    @torch.no_grad()
    def serve(self, images: torch.Tensor, progress: ProgressCallback | None
              ) -> tuple[list[int], list[bool], _Timings, float]:
        predictions: list[int] = []
        degraded: list[bool] = []
        timings = _Timings()
        total = int(images.shape[0])
        start_all = time.perf_counter()
        for start in range(0, total, self.config.batch_size):
            batch = images[start:start + self.config.batch_size].contiguous()
            logits, compute_s, fusion_s, elapsed_s = self._request(batch, start)
            predictions.extend(int(p) for p in logits.argmax(dim=-1))
            degraded.extend([bool(self.failures)] * batch.shape[0])
            timings.latency_s.append(elapsed_s)
            timings.compute_s.append(compute_s)
            timings.fusion_s.append(fusion_s)
            self.served = len(predictions)
            if progress:
                progress(self.served, total, "degraded" if self.failures else "")
        return predictions, degraded, timings, time.perf_counter() - start_all

    def _request(self, batch: torch.Tensor, first_image: int
                 ) -> tuple[torch.Tensor, float, float, float]:
        """One request: (logits, slowest worker's compute s, fusion s, end-to-end s)."""
        started = time.perf_counter()
        deadline = time.monotonic() + self.config.timeout_s
        n = int(batch.shape[0])
        live = self.live()
        replies = [protocol.reply_buffer(n, link.width) for link in live]
        # Every receive is posted before the first send: no reply waits for a buffer, and on a host
        # with fewer cores than processes the woken workers do not preempt the posting. (Sends
        # first measured no better with a core per process, and worse on 2 cores.)
        receives = [dist.irecv(reply, src=link.group_rank, group=link.group)
                    for link, reply in zip(live, replies)]
        wire = protocol.to_wire(batch)
        sends = [dist.isend(wire, dst=link.group_rank, group=link.group) for link in live]
        answered: list[tuple[_Link, torch.Tensor]] = []
        compute_s = 0.0
        for link, send, recv, reply in zip(live, sends, receives, replies):
            if self._wait(link, send, deadline, first_image) and \
                    self._wait(link, recv, deadline, first_image):
                values, worker_s = protocol.unpack_features(reply, n, link.width)
                answered.append((link, values))
                compute_s = max(compute_s, worker_s)
        self._check_failures()
        features = self._fusion_input(answered, n)
        received = time.perf_counter()
        logits = self.fusion(features)
        done = time.perf_counter()
        return logits, compute_s, done - received, done - started

    def _fusion_input(self, answered: list[tuple[_Link, torch.Tensor]], n: int) -> torch.Tensor:
        """(n, total width) fusion input; the columns of devices that did not answer stay zero."""
        if self.columns_in_order and len(answered) == len(self.links):
            return torch.cat([values for _, values in answered], dim=1)  # one op, no scatter
        features = torch.zeros(n, self.total_width)
        for link, values in answered:
            features[:, link.columns] = values
        return features

    def _wait(self, link: _Link, work, deadline: float, first_image: int | None = None) -> bool:
        """Wait for one operation of `link` until `deadline`; a failure marks the link dead."""
        if not link.alive:
            return False
        remaining = max(deadline - time.monotonic(), 1e-3)
        try:
            work.wait(timeout=timedelta(seconds=remaining))
            return True
        except RuntimeError as exc:
            link.alive = False
            link.pending.append(work)
            reason = self._reason(link, exc)
            self.failures.append(DeviceFailure(device=link.device, rank=link.rank, reason=reason,
                                               at_image=first_image))
            log.warning("device %s (rank %d) failed: %s", link.device, link.rank, reason)
            return False

    def _reason(self, link: _Link, exc: RuntimeError) -> str:
        text = str(exc)
        if "Timed out" in text or "timeout" in text.lower():
            reason = f"no answer within {self.config.timeout_s:g} s (hung or too slow)"
            status = self.exit_status(link.rank) if self.exit_status else None
        else:
            reason = "connection lost"
            status = self._exit_status(link.rank)
        return f"{reason}; process {status}" if status else reason

    def _exit_status(self, rank: int) -> str | None:
        """How a local worker ended, waiting briefly for the OS to report a death just seen."""
        if self.exit_status is None:
            return None
        deadline = time.monotonic() + EXIT_STATUS_GRACE_S
        while (status := self.exit_status(rank)) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return status

    def _check_failures(self) -> None:
        """Stop the run on a failure unless degraded mode may go on (some device still answers)."""
        if not self.failures:
            return
        if not self.config.degraded or not self.live():
            raise WorkerFailedError(self.failures, completed_images=self.served)

    def dismiss(self) -> None:
        """Say bye to every live worker after the last request. (A failed run sends none: closing
        the links tells the workers, which then exit with 'lost the aggregator'.)"""
        deadline = time.monotonic() + self.config.timeout_s
        works = []
        for link in self.live():
            works.append((link, dist.isend(torch.zeros(1, dtype=torch.int64), dst=link.group_rank,
                                           group=link.group)))
        for link, work in works:
            try:
                work.wait(timeout=timedelta(seconds=max(deadline - time.monotonic(), 1e-3)))
            except RuntimeError as exc:
                log.warning("device %s: bye not delivered (%s)", link.device, exc)


def _result(source: DeploymentSource, config: RuntimeConfig, images: torch.Tensor,
            labels: torch.Tensor, predictions: list[int], degraded: list[bool], timings: _Timings,
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
        status="degraded" if failures else "ok",
        deployment=source.name,
        num_images=len(predictions),
        batch_size=config.batch_size,
        engine=_engine_of(workers, config.engine),
        predictions=predictions,
        labels=label_list,
        accuracy=sum(p == t for p, t in zip(predictions, label_list)) / len(predictions),
        degraded=degraded,
        latency_median_s=median_s,
        latency_p95_s=_percentile(latency, 0.95),
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
    )


def _engine_of(workers: list[WorkerInfo], default: str) -> str:
    engines = {w.engine for w in workers}
    return engines.pop() if len(engines) == 1 else ("mixed" if engines else default)


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    index = min(len(sorted_values) - 1, max(0, int(round(q * len(sorted_values) + 0.5)) - 1))
    return sorted_values[index]
