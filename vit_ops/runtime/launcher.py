"""Run a whole fleet on this machine (`edvit serve --local`), and run one node of a real fleet
(`edvit worker`).

`serve_local` hosts the fleet's store and the aggregator in the calling process and starts one
worker process per device (multiprocessing's forkserver: workers fork from a server that has
imported torch once, so a fleet starts in a fraction of a second after the first). The launcher
supervises them: it knows how each one ended, for the failure messages, and on the way out, however
the run ended, it kills every worker still running (SIGKILL: a hung or stopped process ignores
politer signals) and reaps it. Local workers also die with the fork server, which dies with the
calling process, so none outlives a killed launcher either.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch.distributed as dist

from planner.progress import ProgressCallback
from vit_ops.runtime.aggregator import serve_aggregator
from vit_ops.runtime.rendezvous import Endpoint, latest_generation, open_store
from vit_ops.runtime.results import RuntimeConfig, ServeResult
from vit_ops.runtime.source import DeploymentSource, devices_of
from vit_ops.runtime.worker import check_fleet_size, serve_worker

if TYPE_CHECKING:
    from vit_ops.runtime.service import ServiceConfig

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
EXIT_GRACE_S = 2.0
REAP_TIMEOUT_S = 5.0
SUPERVISE_POLL_S = 0.1
PRELOAD = ["vit_ops.runtime.worker", "vit_ops.runtime.deployment"]
_PR_SET_PDEATHSIG = 1


def serve_local(source: DeploymentSource | str | Path, num_images: int = 100,
                config: RuntimeConfig | None = None,
                progress: ProgressCallback | None = None) -> ServeResult:
    """Serve the first `num_images` held-out images with one local process per device.

    `source` is a deployment directory or a `DeploymentSource`. Raises `WorkerFailedError` naming
    the devices that failed (unless `config.degraded` lets the run go on) and `InputError` for bad
    input; no worker process survives the call.
    """
    config = config or RuntimeConfig()
    source = resolve_source(source)
    world_size = len(devices_of(source)) + 1
    store = open_store(Endpoint(LOOPBACK, 0), 0, world_size, config.timeout_s)
    port = store.underlying_store.port
    with LocalFleet(source, world_size, Endpoint(LOOPBACK, port), config) as fleet:
        return serve_aggregator(source, store, config, num_images, progress, fleet.exit_status)


def run_node(source: DeploymentSource | str | Path, rank: int, world_size: int,
             endpoint: Endpoint, config: RuntimeConfig, num_images: int = 100,
             progress: ProgressCallback | None = None) -> ServeResult | int:
    """One node of a fleet spread over machines: rank 0 returns the run's result, a worker its
    exit code."""
    source = resolve_source(source)
    if rank:
        return serve_worker(source, rank, world_size, endpoint, config)  # checks the fleet size
    check_fleet_size(source, rank, world_size)
    store = open_store(endpoint, 0, world_size, config.timeout_s)
    return serve_aggregator(source, store, config, num_images, progress)


def serve_local_http(source: DeploymentSource | str | Path, config: RuntimeConfig,
                     service: "ServiceConfig", stop=None) -> int:
    """The service (`vit_ops.runtime.server`) over a fleet on this machine whose dead or dropped
    workers are restarted (`service.max_restarts` per device within `restart_window_s`, with
    backoff, then again after a rest), and whose ranks a worker started by hand may take over (it
    prints the store's address for that); returns the exit code after a graceful shutdown."""
    from vit_ops.runtime.server import run_service

    source = resolve_source(source)
    world_size = len(devices_of(source)) + 1
    store = open_store(Endpoint(LOOPBACK, 0), 0, world_size, config.timeout_s)
    endpoint = Endpoint(LOOPBACK, store.underlying_store.port)
    policy = RestartPolicy(max_restarts=service.max_restarts, window_s=service.restart_window_s)
    with LocalFleet(source, world_size, endpoint, config, policy, store) as fleet:
        fleet.supervise()
        joins = (f"fleet store on {LOOPBACK}:{endpoint.port}: a worker started by hand "
                 f"(edvit worker DEPLOY_DIR --rank R --world-size {world_size} --master "
                 f"{LOOPBACK}:{endpoint.port}) takes rank R's place")
        return run_service(source, store, config, service, fleet.exit_status, fleet.restart, stop,
                           joins)


def run_node_http(source: DeploymentSource | str | Path, world_size: int, endpoint: Endpoint,
                  config: RuntimeConfig, service: "ServiceConfig", stop=None) -> int:
    """Rank 0 of a fleet spread over machines as the service; workers (re)join it any time."""
    from vit_ops.runtime.server import run_service

    source = resolve_source(source)
    check_fleet_size(source, 0, world_size)
    store = open_store(endpoint, 0, world_size, config.timeout_s)
    return run_service(source, store, config, service, stop=stop)


def resolve_source(source: DeploymentSource | str | Path) -> DeploymentSource:
    if isinstance(source, (str, Path)):
        from vit_ops.runtime.deployment import open_deployment

        return open_deployment(source)
    return source


@dataclass(frozen=True)
class RestartPolicy:
    """How a local fleet brings back a dead worker: at most `max_restarts` per device within
    `window_s`, the k-th of them after `backoff_s * 2**k` seconds (at most `max_backoff_s`). A
    device that used them all rests until the oldest leaves the window, then is tried again: a
    device is never given up for good while the service runs."""

    max_restarts: int = 0  # 0: never (a benchmark run reports the failure instead)
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    window_s: float = 300.0

    def delay(self, history: list[float], now: float) -> tuple[float, list[float]] | None:
        """Seconds until the next restart of a device that restarted at `history` (monotonic
        instants), and the restarts still within the window; None: never restart."""
        if not self.max_restarts:
            return None
        recent = [t for t in history if now - t < self.window_s]
        if len(recent) < self.max_restarts:
            return min(self.backoff_s * 2 ** len(recent), self.max_backoff_s), recent
        freed = recent[len(recent) - self.max_restarts] + self.window_s  # the oldest counted
        return max(freed - now, self.max_backoff_s), recent


class LocalFleet:
    """The worker processes of a local fleet: started on enter, restarted by `restart(rank)` within
    the `RestartPolicy`, all gone on exit."""

    def __init__(self, source: DeploymentSource, world_size: int, endpoint: Endpoint,
                 config: RuntimeConfig, policy: RestartPolicy = RestartPolicy(),
                 store: "dist.Store | None" = None) -> None:
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(PRELOAD)
        self.args = (source, world_size, endpoint, config, logging.getLogger().level)
        self.policy = policy
        self.processes = {rank: self._new_process(rank) for rank in range(1, world_size)}
        self.restarts: dict[int, list[float]] = {rank: [] for rank in self.processes}
        self.lock = threading.Lock()
        self._timers: list[threading.Timer] = []
        self._stopping = False
        self.store = store  # the fleet's: to see a worker started by hand take a rank over
        self._pending: set[int] = set()  # ranks with a restart scheduled
        # the rank's generation when our newest worker started: its announcement is the next one
        self._started_at = {rank: 0 for rank in self.processes}
        self._handed_over: set[int] = set()  # ranks a worker not started here took over
        self._never: set[int] = set()  # ranks the policy does not restart

    def _new_process(self, rank: int):
        source, world_size, endpoint, config, level = self.args
        return self.context.Process(target=_local_worker_main, name=f"edvit-worker-{rank}",
                                    daemon=True,
                                    args=(source, rank, world_size, endpoint, config, level))

    def __enter__(self) -> "LocalFleet":
        try:
            for process in self.processes.values():
                process.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.stop(grace_s=EXIT_GRACE_S if exc_type is None else 0.0)

    def exit_status(self, rank: int) -> str | None:
        """'exited with code N' / 'killed by SIGNAME' once worker `rank` has ended, else None
        (also while a worker started by hand has the rank: how ours ended says nothing of it)."""
        if rank in self._handed_over:
            return None
        process = self.processes[rank]
        if process.exitcode is None and not process.is_alive():
            process.join(0)
        code = process.exitcode
        if code is None:
            return None
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exited with code {code}"

    def supervise(self) -> None:
        """Restart workers whose process ended, from a thread, for as long as the fleet runs."""
        thread = threading.Thread(target=self._supervise, name="edvit-supervisor", daemon=True)
        thread.start()

    def _supervise(self) -> None:
        while not self._stopping:
            for rank in list(self.processes):
                left_alone = self._pending | self._handed_over | self._never
                if rank not in left_alone and self.exit_status(rank) is not None:
                    self._ended(rank)
            time.sleep(SUPERVISE_POLL_S)

    def _ended(self, rank: int) -> None:
        """Our worker for `rank` ended: restart it, unless a worker started by hand announced
        itself after it (its own announcement is the one generation after `_started_at`)."""
        if self._taken_over(rank):
            with self.lock:
                self._handed_over.add(rank)
            log.warning("worker %d: a worker started by hand has the rank; not restarted", rank)
            return
        self.restart(rank)

    def restart(self, rank: int) -> bool:
        """Kill worker `rank` if it still runs (its link was dropped: it is hung or dead) and
        start a new one after the policy's delay (a long one once its restarts within the
        window are used up); False when the policy never restarts."""
        with self.lock:
            now = time.monotonic()
            if rank in self._pending or self._loading(rank):
                return True  # loading: the lost link was an older worker's (it has none yet)
            planned = None if self._stopping else self.policy.delay(self.restarts[rank], now)
            if planned is None:
                self._never.add(rank)
                return False
            delay, recent = planned
            self.restarts[rank] = recent + [now + delay]
            self._handed_over.discard(rank)
            self._pending.add(rank)
            timer = threading.Timer(delay, self._replace, args=(rank,))
            timer.daemon = True
            self._timers.append(timer)
            timer.start()
        if len(recent) >= self.policy.max_restarts:
            log.error("worker %d: %d restarts within %g s; trying again in %.0f s (a worker "
                      "started by hand for rank %d joins at once)", rank, len(recent),
                      self.policy.window_s, delay, rank)
        else:
            log.warning("worker %d: restarting in %.2f s", rank, delay)
        return True

    def _replace(self, rank: int) -> None:
        with self.lock:
            if self._stopping:
                return
            self._pending.discard(rank)
            old = self.processes[rank]
            if old.is_alive():
                old.kill()  # dropped by the fleet (hung), or superseded by a worker started by hand
            old.join(REAP_TIMEOUT_S)
            if self._taken_over(rank):
                # the rank is that worker's own now; if it is lost, the fleet's on_lost calls
                # restart again
                self._handed_over.add(rank)
                log.warning("worker %d: a worker started by hand took the rank over", rank)
                return
            self._started_at[rank] = self._generation(rank)
            process = self._new_process(rank)
            process.start()
            self.processes[rank] = process

    def _loading(self, rank: int) -> bool:
        """Whether our newest worker for `rank` runs but has not announced itself yet."""
        return (rank not in self._handed_over and self.processes[rank].is_alive()
                and self._generation(rank) <= self._started_at[rank])

    def _taken_over(self, rank: int) -> bool:
        """Whether a worker not started here announced itself for `rank` after our newest."""
        return self._generation(rank) > self._started_at[rank] + 1

    def _generation(self, rank: int) -> int:
        """The newest generation announced for `rank` (0 without a store to ask)."""
        if self.store is None:
            return 0
        try:
            return latest_generation(self.store, rank)
        except (RuntimeError, dist.DistError):  # the store is closing
            return 0

    def stop(self, grace_s: float = 0.0) -> None:
        """Give workers `grace_s` to exit on their own (after a normal run), then kill and reap
        the rest."""
        with self.lock:
            self._stopping = True
            for timer in self._timers:
                timer.cancel()
        started = [p for p in self.processes.values() if p.pid is not None]
        deadline = time.monotonic() + grace_s
        for process in started:
            process.join(max(deadline - time.monotonic(), 0))
        for process in started:
            if process.is_alive():
                log.info("killing worker %s (pid %d)", process.name, process.pid)
                process.kill()
        for process in started:
            process.join(REAP_TIMEOUT_S)
            if process.is_alive():
                log.error("worker %s (pid %d) did not die", process.name, process.pid)


LOCAL_WORKER_NICENESS = 1


def _local_worker_main(source: DeploymentSource, rank: int, world_size: int, endpoint: Endpoint,
                       config: RuntimeConfig, log_level: int) -> None:
    """Entry point of a local worker process."""
    _die_with_parent()
    os.nice(LOCAL_WORKER_NICENESS)
    logging.basicConfig(level=log_level or logging.WARNING,
                        format=f"%(levelname)s rank {rank} %(name)s: %(message)s")
    sys.exit(serve_worker(source, rank, world_size, endpoint, config))


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent (the fork server) exits."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
