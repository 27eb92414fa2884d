"""The messages between the aggregator and one worker, point-to-point on the worker's own link
(`vit_ops.runtime.link`).

Every exchange starts with a control message (aggregator -> worker), int64[2] = (op, n):

- REQUEST, n images: then the images (n, C, H, W) in the wire dtype (`planner.wire.WIRE_DTYPE`,
  uint8, which the planner charges as the input transfer), normalised on the worker; the worker answers features float32 (n * width + 1), whose last float is its compute time
  for the request in seconds (so the aggregator can split a request's time into compute and
  communication without another message). n = 0 is a ping: no images, the answer is the time alone.
- CALIBRATE, n = batch size: the worker times its extractor alone on n blank images and answers
  float32[1], the median seconds.
- BYE: the worker leaves (exit code 0).

Requests are any size: a service batches whatever is waiting, a benchmark its fixed batch.
"""

from __future__ import annotations

import torch

from planner import wire

REQUEST, CALIBRATE, BYE = 1, 2, 3
CONTROL_LEN = 2
WIRE_DTYPE = getattr(torch, wire.WIRE_DTYPE)  # the images' dtype on the wire


def control(op: int, n: int = 0) -> torch.Tensor:
    return torch.tensor([op, n], dtype=torch.int64)


def empty_control() -> torch.Tensor:
    return torch.zeros(CONTROL_LEN, dtype=torch.int64)


def read_control(message: torch.Tensor) -> tuple[int, int]:
    op, n = (int(v) for v in message.tolist())
    return op, n


def to_wire(pixels: torch.Tensor) -> torch.Tensor:
    """8-bit pixels as they are sent (no copy when they already are in the wire dtype)."""
    return pixels.to(WIRE_DTYPE).contiguous()


def image_buffer(batch: int, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """Where a worker receives one request's images."""
    return torch.empty(batch, *image_shape, dtype=WIRE_DTYPE)


def pack_features(features: torch.Tensor, compute_s: float) -> torch.Tensor:
    """(b, width) features + the compute time -> one flat float32 message."""
    flat = features.detach().to(torch.float32).reshape(-1)
    return torch.cat([flat, torch.tensor([compute_s], dtype=torch.float32)])


def reply_buffer(batch: int, width: int) -> torch.Tensor:
    return torch.empty(batch * width + 1, dtype=torch.float32)


def unpack_features(message: torch.Tensor, batch: int, width: int) -> tuple[torch.Tensor, float]:
    """The inverse of `pack_features`: (b, width) features and the compute seconds."""
    return message[:-1].view(batch, width), float(message[-1])
