"""Distributed inference of a materialised plan over torch.distributed (gloo), one process per device.

Rank 0 (the aggregator) feeds images, every worker runs its own sub-model(s) on each input, and the
aggregator fuses their features. `serve_local` runs a whole fleet on this machine; `run_node` runs
one node of a fleet spread over devices (`edvit worker`, torchrun). Failures of devices are named
within a timeout (`WorkerFailedError`), or, in degraded mode, served around and marked.
`serve_local_http` / `run_node_http` keep the fleet as a long-running HTTP service (Open Inference
Protocol v2, `vit_ops.runtime.http_app`) that workers rejoin after a restart; `Client` talks to it.
"""

from vit_ops.runtime.launcher import run_node, run_node_http, serve_local, serve_local_http
from vit_ops.runtime.rendezvous import Endpoint
from vit_ops.runtime.results import (Calibration, DeviceFailure, RuntimeConfig, ServeResult,
                                     WorkerFailedError, WorkerInfo)
from vit_ops.runtime.source import DeploymentSource, FeatureSlot, predict_fused

__all__ = ["Calibration", "Client", "DeploymentSource", "DeviceFailure", "Endpoint", "FeatureSlot",
           "RuntimeConfig", "ServeResult", "WorkerFailedError", "WorkerInfo", "predict_fused",
           "run_node", "run_node_http", "serve_local", "serve_local_http"]


def __getattr__(name: str):
    """`Client` is imported on first use: it needs httpx (the `serve` extra), the runtime not."""
    if name == "Client":
        from vit_ops.runtime.client import Client

        return Client
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
