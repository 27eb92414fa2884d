"""What runs a worker's sub-model(s): eager PyTorch, or the same graph in onnxruntime.

An edge device usually runs an exported graph: at batch 1 eager PyTorch spends most of a small
sub-model's time in per-module Python dispatch, which onnxruntime does not have (on this host the
digits sub-models take 0.41 ms eager and 0.07 ms in onnxruntime, `benchmarks/runtime_bench.py`).
With `engine="onnxruntime"` the worker exports the extractor it loaded (whatever the deployment
source) to ONNX in memory, opens a CPU session pinned to the worker's threads, and checks it
against PyTorch on the load-check image before joining, so a graph that does not reproduce the
model never serves. Transport stays torch.distributed either way.
"""

from __future__ import annotations

import io
from typing import Literal

import torch
import torch.nn as nn

from planner.errors import InputError
from vit_ops.deploy import onnx_max_abs_diff, open_session, write_onnx

Engine = Literal["torch", "onnxruntime"]
ENGINES: tuple[str, ...] = ("torch", "onnxruntime")
MAX_ABS_DIFF = 1e-3  # float32 graph rewrites stay far below this; a wrong graph does not


class OnnxExtractor:
    """A feature extractor run by onnxruntime: images (B, C, H, W) -> features (B, width)."""

    def __init__(self, session) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: images.detach().numpy()}
        return torch.from_numpy(self.session.run(None, feed)[0])


Extractor = nn.Module | OnnxExtractor


def prepare_extractor(model: nn.Module, example: torch.Tensor, engine: Engine, threads: int,
                      expected: torch.Tensor | None = None) -> Extractor:
    """`model` itself for "torch"; for "onnxruntime" its exported graph, checked on `example`
    against `expected` (the model's output on it, computed here when not given)."""
    if engine == "torch":
        return model
    if engine != "onnxruntime":
        raise InputError(f"must be one of {', '.join(ENGINES)}", field="engine", value=engine)
    try:
        import onnxruntime  # noqa: F401  (only to name a missing install here)
    except ImportError:
        raise InputError("onnxruntime is not installed (pip install 'edvit[export]')",
                         field="--engine", value=engine) from None
    buffer = io.BytesIO()
    write_onnx(model, example, buffer, ["features"])
    session = open_session(buffer.getvalue(), threads)
    if expected is None:
        with torch.no_grad():
            expected = model(example)
    diff = onnx_max_abs_diff(session, example, expected)
    if not diff <= MAX_ABS_DIFF:
        raise ValueError(f"the onnxruntime graph differs from the model by {diff:.3g} "
                         f"(more than {MAX_ABS_DIFF:g})")
    return OnnxExtractor(session)
