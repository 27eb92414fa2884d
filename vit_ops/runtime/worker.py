"""A worker: one device of the fleet, serving its own sub-model(s) to the aggregator.

`serve_worker` loads only the feature extractor of its device and the standby copies placed on it
(threads pinned; a device may hold copies alone), joins the fleet (a
fresh link of its own, `vit_ops.runtime.link`, so it may also rejoin a running service after a
restart), and answers every request of the aggregator with the features of the 8-bit images it
received, normalised here with the deployment's eval transform (and, when asked, those of the
standby copies of a failed device's slots), until the aggregator says bye. It
returns a process exit code: 0 after the aggregator's bye, 1 when it closed the fleet without
accepting this worker or was lost (every wait is bounded: `3 x timeout_s`, since a worker may
legitimately idle while the aggregator waits out another device's timeout).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta

import torch

from planner.errors import InputError
from vit_ops.runtime import protocol
from vit_ops.runtime.engine import Extractor, prepare_extractor
from vit_ops.runtime.link import WORKER, Link
from vit_ops.runtime.rendezvous import (Endpoint, announce_failed, announce_joined, open_store,
                                        wait_for_accept)
from vit_ops.runtime.results import RuntimeConfig, WorkerInfo, first_line
from vit_ops.runtime.source import DeploymentSource, devices_of, feature_width, standby_slots
from vit_ops.runtime.transform import EvalTransform, eval_transform
from vit_ops.timing import measure_latency, pin_threads

log = logging.getLogger(__name__)

IDLE_TIMEOUT_FACTOR = 3


def worker_idle_timeout_s(config: RuntimeConfig) -> float:
    return IDLE_TIMEOUT_FACTOR * max(config.timeout_s, config.join_limit_s)


def check_fleet_size(source: DeploymentSource, rank: int, world_size: int) -> str:
    """The device of `rank`; the world must be the aggregator plus one process per device."""
    devices = devices_of(source)
    if world_size != len(devices) + 1:
        raise InputError(f"the deployment has {len(devices)} devices, so the fleet has "
                         f"{len(devices) + 1} processes (aggregator + one per device)",
                         field="--world-size", value=world_size)
    if not 0 <= rank < world_size:
        raise InputError(f"must be in 0..{world_size - 1}", field="--rank", value=rank)
    return devices[rank - 1] if rank else "aggregator"


def serve_worker(source: DeploymentSource, rank: int, world_size: int, endpoint: Endpoint,
                 config: RuntimeConfig) -> int:
    """Run worker `rank` (>= 1) of the fleet; returns the process exit code."""
    device = check_fleet_size(source, rank, world_size)
    if rank == 0:
        raise InputError("rank 0 is the aggregator, not a worker", field="--rank", value=rank)
    threads, interop = pin_threads(config.threads)
    idle_s = worker_idle_timeout_s(config)
    store = open_store(endpoint, rank, world_size, idle_s)
    try:
        models = _load_models(source, device, config, threads)
    except Exception as exc:  # any load failure is reported to the aggregator, then raised
        announce_failed(store, rank, f"{exc.__class__.__name__}: {exc}")
        raise
    generation = announce_joined(store, WorkerInfo(
        device=device, rank=rank, host=socket.gethostname(), pid=os.getpid(), threads=threads,
        interop_threads=interop, feature_dim=models.width, engine=config.engine,
        standby_slots=sorted(models.standby)))
    log.info("rank %d (%s) announced (generation %d): %d threads, feature width %d, standby "
             "copies of slots %s", rank, device, generation, threads, models.width,
             sorted(models.standby))
    if not wait_for_accept(store, rank, generation, idle_s):
        return 1
    try:
        link = Link(store, rank, generation, WORKER, idle_s)
        _answer_requests(models, link, threads, eval_transform(source), idle_s)
    except RuntimeError as exc:  # gloo: the aggregator closed the link, died or stopped talking
        log.error("rank %d (%s): lost the aggregator: %s", rank, device, first_line(exc))
        return 1
    log.info("rank %d (%s): done", rank, device)
    return 0


@dataclass
class _Models:
    """What a worker runs: its own sub-models as one extractor (None on a device holding only
    standby copies) and each standby copy's extractor by slot."""

    primary: Extractor | None
    width: int  # of the primary's features
    standby: dict[int, Extractor]
    standby_widths: dict[int, int]

    def features(self, images: torch.Tensor, primaries: bool,
                 standby: tuple[int, ...]) -> torch.Tensor:
        unknown = [s for s in standby if s not in self.standby]
        if unknown:
            raise RuntimeError(f"asked for the standby copy of slot {unknown[0]}, which this "
                               f"worker does not hold")
        n = int(images.shape[0])
        parts = [self.primary(images) if n else torch.empty(0, self.width)] \
            if primaries and self.primary is not None else []
        parts += [self.standby[s](images) if n else torch.empty(0, self.standby_widths[s])
                  for s in standby]
        return torch.cat(parts, dim=-1) if parts else torch.empty(n, 0)


def _load_models(source: DeploymentSource, device: str, config: RuntimeConfig,
                 threads: int) -> _Models:
    """The device's extractor (its sub-models) and its standby copies, each checked."""
    slots = source.slots()
    width = feature_width(slots, device)
    primary = _checked(source.load_worker(device), source, device, width, config, threads) \
        if width else None
    held = standby_slots(slots).get(device, [])
    loaded = source.load_standby(device) if held else {}
    if sorted(loaded) != held:
        raise ValueError(f"{device} should hold standby copies of slots {held}, the deployment "
                         f"gave {sorted(loaded)}")
    standby = {s: _checked(loaded[s], source, f"{device} (standby copy of slot {s})",
                           slots[s].width, config, threads) for s in held}
    return _Models(primary=primary, width=width, standby=standby,
                   standby_widths={s: slots[s].width for s in held})


def _checked(model, source: DeploymentSource, what: str, width: int, config: RuntimeConfig,
             threads: int) -> Extractor:
    """Check an extractor's feature width on one blank image, and hand it to the configured
    engine (which checks its own output against the model's)."""
    model = model.eval()
    example = torch.zeros(1, *source.image_shape())
    with torch.no_grad():
        out = model(example)
    if tuple(out.shape) != (1, width):
        raise ValueError(f"extractor of {what} gives features of shape {tuple(out.shape)}, "
                         f"the fusion head expects (1, {width})")
    return prepare_extractor(model, example, config.engine, threads, expected=out)


@torch.no_grad()
def _answer_requests(models: _Models, link: Link, threads: int, transform: EvalTransform,
                     idle_s: float) -> None:
    """The worker side of `protocol`: requests (and pings), calibration, until bye."""
    shape = (transform.in_chans, transform.img_size, transform.img_size)
    message = protocol.empty_control()
    receipt = torch.zeros(1, dtype=torch.int64)
    while True:
        link.recv(message, idle_s)
        asked = protocol.read_control(message, lambda slots: link.recv(slots, idle_s))
        op, n = asked.op, asked.n
        if op == protocol.BYE:
            return
        if op == protocol.CALIBRATE:  # its own sub-models (a standby-only device: none)
            alone_s = measure_latency(models.primary, torch.zeros(n, *shape),
                                      threads=threads).median_s if models.primary else 0.0
            link.send(torch.tensor([alone_s], dtype=torch.float32), idle_s)
            continue
        if op not in (protocol.REQUEST, protocol.REQUEST_ACKNOWLEDGED):
            raise RuntimeError(f"unknown operation {op} from the aggregator")
        pixels = protocol.image_buffer(n, shape)
        if n:
            link.recv(pixels, idle_s)
        start, start_cpu = time.perf_counter(), time.process_time()
        if op == protocol.REQUEST_ACKNOWLEDGED:  # the aggregator sends the next device its input
            link.isend(receipt, protocol.RECEIPT_TAG).wait(timedelta(seconds=idle_s))
        images = transform.normalize(pixels) if n else pixels.float()
        features = models.features(images, asked.primaries, asked.standby)
        done, done_cpu = time.perf_counter(), time.process_time()
        times = protocol.WorkerTimes(compute_s=done - start, input_arrived_at=start,
                                     features_ready_at=done, compute_cpu_s=done_cpu - start_cpu)
        link.send(protocol.pack_features(features, times), idle_s)
