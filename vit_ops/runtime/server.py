"""Run the service: the fleet joined and kept joined, HTTP answered until SIGTERM or SIGINT.

`run_service` is the aggregator of a long-running fleet. It starts watching the fleet (workers join
and rejoin whenever they come), the dispatcher and uvicorn (in a thread of its own; this thread
keeps the signals), and prints `serving <model> on http://HOST:PORT` once the port is bound. On
SIGTERM or SIGINT it shuts down gracefully: uvicorn stops accepting and finishes the requests in
flight (they are bounded by the timeout), the dispatcher answers whatever is still queued, every
worker is told bye, and the call returns 0.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Callable

import torch.distributed as dist

from planner.errors import InputError

from vit_ops.runtime.classification import class_names_of, model_name_of
from vit_ops.runtime.fleet import ExitStatus, Fleet
from vit_ops.runtime.results import RuntimeConfig
from vit_ops.runtime.service import InferenceService, ServiceConfig
from vit_ops.runtime.source import DeploymentSource, devices_of
from vit_ops.runtime.transform import eval_transform
from vit_ops.timing import pin_threads

log = logging.getLogger(__name__)

SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def run_service(source: DeploymentSource, store: dist.Store, config: RuntimeConfig,
                service_config: ServiceConfig, exit_status: ExitStatus | None = None,
                on_lost: Callable[[int], None] | None = None,
                stop: threading.Event | None = None, joins: str | None = None) -> int:
    """Serve HTTP over the fleet until a shutdown signal (or `stop` is set); returns 0. `joins`
    (how a worker started by hand joins) is printed after the `serving` line."""
    try:
        import uvicorn

        from vit_ops.runtime.http_app import ModelInfo, create_app
        from vit_ops.runtime.metrics import ServiceMetrics
    except ImportError as exc:
        raise InputError(f"the HTTP service needs {exc.name} (pip install 'edvit[serve]')",
                         field="--http") from None
    stop = stop or threading.Event()
    pin_threads(config.aggregator_threads, interop=False)
    fleet = Fleet(source, store, config, exit_status, on_lost).start()
    metrics = ServiceMetrics()
    service = InferenceService(fleet, config, service_config, metrics.observe_answer).start()
    num_classes = _num_classes(fleet)
    model = ModelInfo(name=model_name_of(source), class_names=class_names_of(source, num_classes),
                      transform=eval_transform(source), devices=devices_of(source),
                      degraded_mode=config.degraded, timeout_s=config.timeout_s)
    app = create_app(service, model, metrics)
    server = uvicorn.Server(uvicorn.Config(
        app, host=service_config.host, port=service_config.port, log_level="warning",
        access_log=False, timeout_graceful_shutdown=config.timeout_s + 5, lifespan="off"))
    thread = threading.Thread(target=server.run, name="edvit-http", daemon=True)
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set())
                for sig in SHUTDOWN_SIGNALS} if _main_thread() else {}
    try:
        thread.start()
        _announce(server, thread, model.name, joins)
        while not stop.wait(0.2):
            if not thread.is_alive():
                break  # uvicorn ended on its own (it could not bind, say)
        log.info("shutting down: draining requests in flight")
        server.should_exit = True
        thread.join()
    finally:
        service.stop()
        fleet.close("the service shut down")
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        raise InputError(f"cannot listen on {service_config.host}:{service_config.port}",
                         field="--http")
    return 0


def _announce(server, thread: threading.Thread, name: str, joins: str | None) -> None:
    """Print where the service listens once uvicorn has bound its socket."""
    while not server.started and thread.is_alive():
        time.sleep(0.02)
    if not server.started:
        return
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {name} on http://{shown}:{port}", flush=True)
    if joins:
        print(joins, flush=True)


def _num_classes(fleet: Fleet) -> int:
    import torch

    with torch.no_grad():
        return int(fleet.fusion(torch.zeros(1, fleet.total_width)).shape[-1])


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()

