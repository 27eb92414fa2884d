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

from planner.progress import ProgressCallback
from vit_ops.runtime.aggregator import serve_aggregator
from vit_ops.runtime.rendezvous import Endpoint, open_store
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
    workers are restarted (`service.max_restarts` per device within the policy's window, with
    backoff); returns the exit code after a graceful shutdown."""
    from vit_ops.runtime.server import run_service

    source = resolve_source(source)
    world_size = len(devices_of(source)) + 1
    store = open_store(Endpoint(LOOPBACK, 0), 0, world_size, config.timeout_s)
    endpoint = Endpoint(LOOPBACK, store.underlying_store.port)
    policy = RestartPolicy(max_restarts=service.max_restarts)
    with LocalFleet(source, world_size, endpoint, config, policy) as fleet:
        fleet.supervise()
        return run_service(source, store, config, service, fleet.exit_status, fleet.restart, stop)


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
    `window_s`, the k-th of them after `backoff_s * 2**k` seconds (at most `max_backoff_s`)."""

    max_restarts: int = 0  # 0: never (a benchmark run reports the failure instead)
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    window_s: float = 300.0


class LocalFleet:
    """The worker processes of a local fleet: started on enter, restarted by `restart(rank)` within
    the `RestartPolicy`, all gone on exit."""

    def __init__(self, source: DeploymentSource, world_size: int, endpoint: Endpoint,
                 config: RuntimeConfig, policy: RestartPolicy = RestartPolicy()) -> None:
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(PRELOAD)
        self.args = (source, world_size, endpoint, config, logging.getLogger().level)
        self.policy = policy
        self.processes = {rank: self._new_process(rank) for rank in range(1, world_size)}
        self.restarts: dict[int, list[float]] = {rank: [] for rank in self.processes}
        self.lock = threading.Lock()
        self._timers: list[threading.Timer] = []
        self._stopping = False
        self._pending: set[int] = set()  # ranks with a restart scheduled
        self._given_up: set[int] = set()  # ranks past the policy's restarts

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
        """'exited with code N' / 'killed by SIGNAME' once worker `rank` has ended, else None."""
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
                waiting = self._pending | self._given_up
                if self.exit_status(rank) is not None and rank not in waiting:
                    self.restart(rank)
            time.sleep(SUPERVISE_POLL_S)

    def restart(self, rank: int) -> bool:
        """Kill worker `rank` if it still runs (its link was dropped: it is hung or dead) and
        start a new one after the policy's backoff; False when the policy allows no more."""
        with self.lock:
            now = time.monotonic()
            recent = [t for t in self.restarts[rank] if now - t < self.policy.window_s]
            if rank in self._pending:
                return True
            if self._stopping or rank in self._given_up:
                return False
            if len(recent) >= self.policy.max_restarts:
                self._given_up.add(rank)
                if self.policy.max_restarts:
                    log.error("worker %d: not restarted again (%d restarts within %g s)", rank,
                              len(recent), self.policy.window_s)
                return False
            delay = min(self.policy.backoff_s * 2 ** len(recent), self.policy.max_backoff_s)
            self.restarts[rank] = recent + [now]
            self._pending.add(rank)
            timer = threading.Timer(delay, self._replace, args=(rank,))
            timer.daemon = True
            self._timers.append(timer)
            timer.start()
        log.warning("worker %d: restarting in %.2f s", rank, delay)
        return True

    def _replace(self, rank: int) -> None:
        with self.lock:
            if self._stopping:
                return
            old = self.processes[rank]
            if old.is_alive():
                old.kill()
            old.join(REAP_TIMEOUT_S)
            process = self._new_process(rank)
            process.start()
            self.processes[rank] = process
            self._pending.discard(rank)

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
