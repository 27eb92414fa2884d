"""Measure the link to a peer over torch.distributed (gloo over TCP), for `edvit calibrate --link-to`.

The device being calibrated (rank 1) connects to a peer (rank 0, `serve_link_peer`, normally the
aggregator, started with `edvit calibrate --link-serve`) and times messages both ways: the peer
sends `n` bytes after a one-integer request (download, the direction the input takes), or the
device sends `n` bytes and waits for a one-integer acknowledgement (upload, the features). Each
direction is timed at a small and a large size, interleaved, and the bandwidth is the difference
in bytes over the difference in median time, so fixed costs (the request, the acknowledgement,
gloo's per-message work) drop out; the large size grows until one transfer takes at least
`min_transfer_s`. What is measured is what the runtime's own messages get, headers included.

One device at a time: the aggregator's link is the shared medium, and devices measured at once
would each see a share of it.
"""

from __future__ import annotations

import logging
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from pydantic import Field

from planner.schema_base import StrictModel

from vit_ops.runtime.rendezvous import Endpoint

log = logging.getLogger(__name__)

SMALL_BYTES = 4096
FIRST_LARGE_BYTES = 64 * 1024
MAX_LARGE_BYTES = 256 * 1024 * 1024
DOWNLOAD, UPLOAD, END = 0, 1, 2


SEND_BURST = 4  # inputs sent one after another per request, as to a fleet of four
SEND_BURSTS = 10  # 40 sends: one figure stable between calibrations
SEND_IDLE_S = 0.03  # between bursts: the devices computing, the aggregator waiting


class SendMeasurement(StrictModel):
    """Acknowledged sends of one input, timed the way the aggregator sends them (seconds)."""

    bytes: int = Field(description="bytes of one input")
    burst: int = Field(description="sends one after another per burst")
    sends: int
    median_s: float
    p90_s: float
    bytes_s: float = Field(description="bytes / the measured upload rate")

    @property
    def overhead_s(self) -> float:
        """What one send costs beyond its bytes at the link's rate (>= 0)."""
        return max(0.0, self.median_s - self.bytes_s)


class LinkMeasurement(StrictModel):
    """What `measure_link` found (bytes of payload per second; seconds)."""

    peer: str = Field(description="HOST:PORT measured against")
    download_bytes_per_s: float = Field(description="peer -> this machine (the input's direction)")
    upload_bytes_per_s: float = Field(description="this machine -> peer (the features')")
    round_trip_s: float = Field(description="median time of a small request and its answer")
    large_bytes: int = Field(description="size of the large transfers timed")
    repeats: int
    send: SendMeasurement | None = Field(
        default=None, description="acknowledged sends of an input, this machine otherwise idle "
                                  "(with send_bytes)")
    send_hosting: SendMeasurement | None = Field(
        default=None, description="the same while a sibling process computes, as the "
                                  "aggregator's own worker does when it hosts a sub-model")

    def per_send_costs(self) -> list[tuple[str, SendMeasurement, str]]:
        """(the device kind's figure, its measurement, how it was measured) of each per-send
        cost measured (none without send_bytes)."""
        measured = (("send_overhead_s", self.send, "alone"),
                    ("hosting_send_overhead_s", self.send_hosting,
                     "beside a process computing (a sub-model here)"))
        return [(figure, send, how) for figure, send, how in measured if send is not None]

    @property
    def link_bytes_per_s(self) -> float:
        """The figure a device kind carries: the slower direction."""
        return min(self.download_bytes_per_s, self.upload_bytes_per_s)


def _connect(endpoint: Endpoint, rank: int, timeout_s: float) -> dist.Store:
    """A two-rank gloo default group (GLOO_SOCKET_IFNAME picks the interface, as in the runtime)."""
    store = dist.TCPStore(endpoint.host, endpoint.port, 2, is_master=rank == 0,
                          timeout=timedelta(seconds=timeout_s), wait_for_workers=False)
    dist.init_process_group("gloo", store=dist.PrefixStore("edvit-link/", store), rank=rank,
                            world_size=2, timeout=timedelta(seconds=timeout_s))
    return store


def serve_link_peer(endpoint: Endpoint, sessions: int | None = None,
                    timeout_s: float = 600.0) -> int:
    """Answer `sessions` devices' measurements, one after another (None: until interrupted);
    returns how many were served."""
    served = 0
    while sessions is None or served < sessions:
        store = _connect(endpoint, 0, timeout_s)
        try:
            _answer()
        finally:
            dist.destroy_process_group()
            del store  # closes the listening socket before the next session opens it
        served += 1
        log.info("link peer: served session %d", served)
    return served


def _answer() -> None:
    command = torch.zeros(2, dtype=torch.int64)
    ack = torch.zeros(1, dtype=torch.int64)
    buffers: dict[int, torch.Tensor] = {}
    while True:
        dist.recv(command, src=1)
        kind, size = (int(v) for v in command)
        if kind == END:
            return
        buffer = buffers.setdefault(size, torch.zeros(size, dtype=torch.uint8))
        if kind == DOWNLOAD:
            dist.send(buffer, dst=1)
        else:
            dist.recv(buffer, src=1)
            dist.send(ack, dst=1)


class _Client:
    def __init__(self) -> None:
        self.buffers: dict[int, torch.Tensor] = {}
        self.ack = torch.zeros(1, dtype=torch.int64)

    def transfer_s(self, kind: int, size: int) -> float:
        buffer = self.buffers.setdefault(size, torch.zeros(size, dtype=torch.uint8))
        start = time.perf_counter()
        dist.send(torch.tensor([kind, size], dtype=torch.int64), dst=0)
        if kind == DOWNLOAD:
            dist.recv(buffer, src=0)
        else:
            dist.send(buffer, dst=0)
            dist.recv(self.ack, src=0)
        return time.perf_counter() - start

    def end(self) -> None:
        dist.send(torch.tensor([END, 0], dtype=torch.int64), dst=0)


@contextmanager
def _busy_sibling():
    """A process beside this one (same cgroup, so the same CPU quota) that computes all along,
    as the aggregator's own worker does while the aggregator sends the other devices their
    input: the sends then wait whenever it has spent the quota."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def measure_link(endpoint: Endpoint, repeats: int = 3, min_transfer_s: float = 0.25,
                 timeout_s: float = 120.0, send_bytes: int | None = None) -> LinkMeasurement:
    """Bandwidth both ways and round trip to the peer at `endpoint` (see module docstring);
    with `send_bytes`, also `SEND_BURSTS` bursts of `SEND_BURST` acknowledged uploads of that
    many bytes (request, payload, receipt: the runtime's acknowledged input send), each burst
    after `SEND_IDLE_S` idle: first with this machine otherwise idle (`send`), then while a
    sibling process computes (`send_hosting`, `_busy_sibling`: a sub-model on the aggregator),
    so both per-send costs on this machine (its CPU quota included) are measured rather than
    assumed."""
    store = _connect(endpoint, 1, timeout_s)
    client = _Client()
    try:
        client.transfer_s(DOWNLOAD, FIRST_LARGE_BYTES)  # warm-up: connection, TCP window
        client.transfer_s(UPLOAD, FIRST_LARGE_BYTES)
        large = FIRST_LARGE_BYTES
        while large < MAX_LARGE_BYTES and client.transfer_s(DOWNLOAD, large) < min_transfer_s:
            large *= 4
        rates = {}
        for kind in (DOWNLOAD, UPLOAD):
            small_s, large_s = [], []
            for _ in range(repeats):
                small_s.append(client.transfer_s(kind, SMALL_BYTES))
                large_s.append(client.transfer_s(kind, large))
            extra_s = max(statistics.median(large_s) - statistics.median(small_s), 1e-9)
            rates[kind] = (large - SMALL_BYTES) / extra_s
            if kind == DOWNLOAD:
                round_trip_s = statistics.median(small_s)
        send = send_hosting = None
        if send_bytes:
            client.transfer_s(UPLOAD, send_bytes)  # warm the buffer
            send = _timed_sends(client, send_bytes, rates[UPLOAD])
            with _busy_sibling():
                send_hosting = _timed_sends(client, send_bytes, rates[UPLOAD])
        client.end()
    finally:
        dist.destroy_process_group()
        del store
    return LinkMeasurement(peer=f"{endpoint.host}:{endpoint.port}",
                           download_bytes_per_s=rates[DOWNLOAD], upload_bytes_per_s=rates[UPLOAD],
                           round_trip_s=round_trip_s, large_bytes=large, repeats=repeats,
                           send=send, send_hosting=send_hosting)


def _timed_sends(client: "_Client", size: int, upload_bytes_per_s: float) -> SendMeasurement:
    """`SEND_BURSTS` bursts of `SEND_BURST` acknowledged uploads of `size` bytes, each burst
    after `SEND_IDLE_S` idle, as the aggregator sends a request's input."""
    times = []
    for _ in range(SEND_BURSTS):
        time.sleep(SEND_IDLE_S)
        times.extend(client.transfer_s(UPLOAD, size) for _ in range(SEND_BURST))
    ordered = sorted(times)
    return SendMeasurement(bytes=size, burst=SEND_BURST, sends=len(times),
                           median_s=statistics.median(ordered),
                           p90_s=ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
                           bytes_s=size / upload_bytes_per_s)


# --- the aggregator's own worker ---------------------------------------------------------------

HANDOFF_REPEATS = 12
HANDOFF_IDLE_S = 0.05  # each request after an idle gap, as the fleet emulation serves them
HANDOFF_FEATURE_FLOATS = 384


class HandoffMeasurement(StrictModel):
    """Requests to a worker process on this machine: input in, `spin_cpu_s` of CPU, features
    back (seconds; each request's spin, timed by the worker, is subtracted)."""

    bytes: int
    spin_cpu_s: float
    spin_wall_s: float = Field(description="the spin's wall time the quota grants (expected)")
    requests: int
    median_s: float = Field(description="median request, input sent to features received")
    spin_measured_s: float | None = Field(
        default=None, description="median of the spins' wall times as the worker timed them")
    spin_cpu_measured_s: float | None = Field(
        default=None, description="median of the spins' CPU times as the worker measured them "
                                  "(the spin counts loop iterations, so about spin_cpu_s)")
    beyond_spin_s: float | None = Field(
        default=None, description="median over the requests of the request less its own spin")

    @property
    def overhead_s(self) -> float:
        """What a request to a sub-model on this machine costs beyond its compute (>= 0)."""
        if self.beyond_spin_s is not None:
            return max(0.0, self.beyond_spin_s)
        return max(0.0, self.median_s - self.spin_wall_s)


def measure_local_handoff(input_bytes: int, spin_cpu_s: float, spin_wall_s: float,
                          timeout_s: float = 120.0) -> HandoffMeasurement:
    """Time requests to a worker process beside this one (it inherits this process's cgroup and
    so its CPU quota), over gloo as the runtime's local worker is reached: the input sent, the
    worker spinning `spin_cpu_s` of CPU (a sub-model's work), features sent back. On a device
    under a quota the two processes share it: the worker's input and the features wait for the
    other process to be scheduled, which a sub-model timed alone never shows."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = (f"from profiler.link import _handoff_worker; _handoff_worker({port}, {input_bytes}, "
            f"{spin_cpu_s!r}, {timeout_s!r})")
    child = subprocess.Popen([sys.executable, "-c", code])
    store = _connect(Endpoint("127.0.0.1", port), 0, timeout_s)
    try:
        pixels = torch.zeros(input_bytes, dtype=torch.uint8)
        features = torch.zeros(HANDOFF_FEATURE_FLOATS)
        go = torch.ones(1, dtype=torch.int64)
        times, spins, spun = [], [], []
        for k in range(HANDOFF_REPEATS + 2):
            time.sleep(HANDOFF_IDLE_S)
            start = time.perf_counter()
            dist.send(go, dst=1)
            dist.send(pixels, dst=1)
            dist.recv(features, src=1)
            if k >= 2:  # two warm-up requests
                times.append(time.perf_counter() - start)
                spins.append(float(features[0]))  # the worker's own timing of its spin
                spun.append(float(features[1]))
        dist.send(torch.zeros(1, dtype=torch.int64), dst=1)
    finally:
        dist.destroy_process_group()
        del store
        child.wait(timeout=30)
    return HandoffMeasurement(bytes=input_bytes, spin_cpu_s=spin_cpu_s, spin_wall_s=spin_wall_s,
                              requests=len(times), median_s=statistics.median(times),
                              spin_measured_s=statistics.median(spins),
                              spin_cpu_measured_s=statistics.median(spun),
                              beyond_spin_s=statistics.median(t - s for t, s in zip(times, spins)))


def _handoff_worker(port: int, input_bytes: int, spin_cpu_s: float, timeout_s: float) -> None:
    """The worker side of `measure_local_handoff` (rank 1)."""
    from profiler.quota import spin, spin_loops_per_s

    store = _connect(Endpoint("127.0.0.1", port), 1, timeout_s)
    try:
        loops_per_s = spin_loops_per_s()
        command = torch.zeros(1, dtype=torch.int64)
        pixels = torch.zeros(input_bytes, dtype=torch.uint8)
        features = torch.zeros(HANDOFF_FEATURE_FLOATS)
        while True:
            dist.recv(command, src=0)
            if not int(command):
                return
            dist.recv(pixels, src=0)
            started, cpu_started = time.perf_counter(), time.thread_time()
            spin(spin_cpu_s, loops_per_s)  # no system calls, as compute (profiler.quota.spin)
            features[0] = time.perf_counter() - started  # the sub-model's own time, as measured
            features[1] = time.thread_time() - cpu_started
            dist.send(features, dst=0)
    finally:
        dist.destroy_process_group()
        del store
