"""A worker: one device of the fleet, serving its own sub-model(s) to the aggregator.

`serve_worker` loads only the feature extractor of its device (threads pinned), joins the fleet (a
fresh link of its own, `vit_ops.runtime.link`, so it may also rejoin a running service after a
restart), and answers every request of the aggregator with the features of the 8-bit images it
received, normalised here with the deployment's eval transform, until the aggregator says bye. It
returns a process exit code: 0 after the aggregator's bye, 1 when it closed the fleet without
accepting this worker or was lost (every wait is bounded: `3 x timeout_s`, since a worker may
legitimately idle while the aggregator waits out another device's timeout).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import timedelta

import torch

from planner.errors import InputError
from vit_ops.runtime import protocol
from vit_ops.runtime.engine import Extractor, prepare_extractor
from vit_ops.runtime.link import WORKER, Link
from vit_ops.runtime.rendezvous import (Endpoint, announce_failed, announce_joined, open_store,
                                        wait_for_accept)
from vit_ops.runtime.results import RuntimeConfig, WorkerInfo, first_line
from vit_ops.runtime.source import DeploymentSource, devices_of, feature_width
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
    width = feature_width(source.slots(), device)
    try:
        model = _load_checked(source, device, width, config, threads)
    except Exception as exc:  # any load failure is reported to the aggregator, then raised
        announce_failed(store, rank, f"{exc.__class__.__name__}: {exc}")
        raise
    generation = announce_joined(store, WorkerInfo(
        device=device, rank=rank, host=socket.gethostname(), pid=os.getpid(), threads=threads,
        interop_threads=interop, feature_dim=width, engine=config.engine))
    log.info("rank %d (%s) announced (generation %d): %d threads, feature width %d", rank, device,
             generation, threads, width)
    if not wait_for_accept(store, rank, generation, idle_s):
        return 1
    try:
        link = Link(store, rank, generation, WORKER, idle_s)
        _answer_requests(model, link, width, threads, eval_transform(source), idle_s)
    except RuntimeError as exc:  # gloo: the aggregator closed the link, died or stopped talking
        log.error("rank %d (%s): lost the aggregator: %s", rank, device, first_line(exc))
        return 1
    log.info("rank %d (%s): done", rank, device)
    return 0


def _load_checked(source: DeploymentSource, device: str, width: int, config: RuntimeConfig,
                  threads: int) -> Extractor:
    """Load the device's extractor, check its feature width on one blank image, and hand it to
    the configured engine (which checks its own output against the model's)."""
    model = source.load_worker(device).eval()
    example = torch.zeros(1, *source.image_shape())
    with torch.no_grad():
        out = model(example)
    if tuple(out.shape) != (1, width):
        raise ValueError(f"extractor of {device} gives features of shape {tuple(out.shape)}, "
                         f"the fusion head expects (1, {width})")
    return prepare_extractor(model, example, config.engine, threads, expected=out)


@torch.no_grad()
def _answer_requests(model: Extractor, link: Link, width: int, threads: int,
                     transform: EvalTransform, idle_s: float) -> None:
    """The worker side of `protocol`: requests (and pings), calibration, until bye."""
    shape = (transform.in_chans, transform.img_size, transform.img_size)
    message = protocol.empty_control()
    receipt = torch.zeros(1, dtype=torch.int64)
    while True:
        link.recv(message, idle_s)
        op, n = protocol.read_control(message)
        if op == protocol.BYE:
            return
        if op == protocol.CALIBRATE:
            alone_s = measure_latency(model, torch.zeros(n, *shape), threads=threads).median_s
            link.send(torch.tensor([alone_s], dtype=torch.float32), idle_s)
            continue
        if op not in (protocol.REQUEST, protocol.REQUEST_ACKNOWLEDGED):
            raise RuntimeError(f"unknown operation {op} from the aggregator")
        pixels = protocol.image_buffer(n, shape)
        if n:
            link.recv(pixels, idle_s)
        start = time.perf_counter()
        if op == protocol.REQUEST_ACKNOWLEDGED:  # the aggregator sends the next device its input
            link.isend(receipt, protocol.RECEIPT_TAG).wait(timedelta(seconds=idle_s))
        features = model(transform.normalize(pixels)) if n else torch.empty(0, width)
        done = time.perf_counter()
        times = protocol.WorkerTimes(compute_s=done - start, input_arrived_at=start,
                                     features_ready_at=done)
        link.send(protocol.pack_features(features, times), idle_s)
