"""The messages between the aggregator and one worker, all torch.distributed point-to-point
operations on their two-rank group (see `rendezvous`).

1. header (aggregator -> worker), int64[HEADER_LEN]: images in the run, request size, C, H, W,
   whether to calibrate;
2. calibration, if asked, one worker at a time: go (int64[1]) -> median seconds alone (float64[1]);
3. per request: images (b, C, H, W) in the wire dtype (`planner.wire.WIRE_DTYPE`, which the planner
   charges as the input transfer) -> features float32 (b * width + 1), whose last float is
   the worker's compute time for the request in seconds (so the aggregator can split a request's
   time into compute and communication without another message);
4. bye (int64[1]): the worker leaves.

Request sizes follow from the header (full batches, then the remainder), so no per-request header
is sent: one message each way per request and worker.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from planner import wire

HEADER_LEN = 6
WIRE_DTYPE = getattr(torch, wire.WIRE_DTYPE)  # the images' dtype on the wire


@dataclass(frozen=True)
class Header:
    num_images: int
    batch_size: int
    image_shape: tuple[int, int, int]
    calibrate: bool

    def to_tensor(self) -> torch.Tensor:
        c, h, w = self.image_shape
        return torch.tensor([self.num_images, self.batch_size, c, h, w, int(self.calibrate)],
                            dtype=torch.int64)

    @classmethod
    def from_tensor(cls, tensor: torch.Tensor) -> "Header":
        n, b, c, h, w, calibrate = (int(v) for v in tensor.tolist())
        return cls(n, b, (c, h, w), bool(calibrate))

    def request_sizes(self) -> list[int]:
        """Images per request, in order."""
        full, rest = divmod(self.num_images, self.batch_size)
        return [self.batch_size] * full + ([rest] if rest else [])


def empty_header() -> torch.Tensor:
    return torch.zeros(HEADER_LEN, dtype=torch.int64)


def to_wire(images: torch.Tensor) -> torch.Tensor:
    """Images as they are sent (no copy when they already are in the wire dtype)."""
    return images.to(WIRE_DTYPE).contiguous()


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
