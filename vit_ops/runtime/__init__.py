"""Distributed inference of a materialised plan over torch.distributed (gloo), one process per device.

Rank 0 (the aggregator) feeds images, every worker runs its own sub-model(s) on each input, and the
aggregator fuses their features. `serve_local` runs a whole fleet on this machine; `run_node` runs
one node of a fleet spread over devices (`edvit worker`, torchrun). Failures of devices are named
within a timeout (`WorkerFailedError`), or, in degraded mode, served around and marked.
"""

from vit_ops.runtime.launcher import run_node, serve_local
from vit_ops.runtime.rendezvous import Endpoint
from vit_ops.runtime.results import (Calibration, DeviceFailure, RuntimeConfig, ServeResult,
                                     WorkerFailedError, WorkerInfo)
from vit_ops.runtime.source import DeploymentSource, FeatureSlot, predict_fused

__all__ = ["Calibration", "DeploymentSource", "DeviceFailure", "Endpoint", "FeatureSlot",
           "RuntimeConfig", "ServeResult", "WorkerFailedError", "WorkerInfo", "predict_fused",
           "run_node", "serve_local"]
