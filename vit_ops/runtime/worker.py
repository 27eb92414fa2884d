"""A worker: one device of the fleet, serving its own sub-model(s) to the aggregator.

`serve_worker` loads only the feature extractor of its device (threads pinned), joins the fleet,
and answers every request of the aggregator with the features of the images it received, until
the aggregator says bye. It returns a process exit code: 0 after a normal run, 1 when the run was
aborted or the aggregator was lost (every wait is bounded: `3 x timeout_s`, since a worker may
legitimately idle while the aggregator waits out another device's timeout).
"""

from __future__ import annotations

import logging
import os
import socket
import time

import torch
import torch.distributed as dist

from planner.errors import InputError
from vit_ops.runtime import protocol
from vit_ops.runtime.engine import Extractor, prepare_extractor
from vit_ops.runtime.rendezvous import (Endpoint, announce_failed, announce_joined, close_links,
                                        connect_links, open_store, wait_for_verdict)
from vit_ops.runtime.results import RuntimeConfig, WorkerInfo
from vit_ops.runtime.source import DeploymentSource, devices_of, feature_width
from vit_ops.runtime.timing import median_latency_s, pin_threads

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
    announce_joined(store, WorkerInfo(device=device, rank=rank, host=socket.gethostname(),
                                      pid=os.getpid(), threads=threads, interop_threads=interop,
                                      feature_dim=width, engine=config.engine))
    log.info("rank %d (%s) joined: %d threads, feature width %d", rank, device, threads, width)
    verdict = wait_for_verdict(store, rank, idle_s)
    if verdict is None:
        return 1
    group_rank, group_size = verdict
    try:
        link = connect_links(store, group_rank, group_size, idle_s)[group_rank]
        _answer_requests(model, link, width, threads)
    except RuntimeError as exc:  # gloo: the aggregator closed the link, died or stopped talking
        log.error("rank %d (%s): lost the aggregator: %s", rank, device, _first_line(exc))
        return 1
    finally:
        close_links()
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
def _answer_requests(model: Extractor, link: dist.ProcessGroup, width: int,
                     threads: int) -> None:
    """The worker side of `protocol`: header, optional calibration, requests, bye."""
    header_buf = protocol.empty_header()
    dist.recv(header_buf, src=0, group=link)
    header = protocol.Header.from_tensor(header_buf)
    if header.calibrate:
        go = torch.zeros(1, dtype=torch.int64)
        dist.recv(go, src=0, group=link)
        example = torch.zeros(header.batch_size, *header.image_shape)
        alone_s = median_latency_s(model, example, threads)
        dist.send(torch.tensor([alone_s], dtype=torch.float64), dst=0, group=link)
    for batch in header.request_sizes():
        images = protocol.image_buffer(batch, header.image_shape)
        dist.recv(images, src=0, group=link)
        start = time.perf_counter()
        features = model(images)
        compute_s = time.perf_counter() - start
        dist.send(protocol.pack_features(features, compute_s), dst=0, group=link)
    bye = torch.zeros(1, dtype=torch.int64)
    dist.recv(bye, src=0, group=link)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else exc.__class__.__name__
