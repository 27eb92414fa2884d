"""The messages between the aggregator and one worker, point-to-point on the worker's own link
(`vit_ops.runtime.link`).

Every exchange starts with a control message (aggregator -> worker), int64[4] =
(op, n, primaries, k):

- REQUEST, n images: when k > 0, then the k slot indices (int64[k]) of the standby copies the
  worker is to run as well (a failed device's slots, `vit_ops.runtime.fleet`); then the images (n, C, H, W) in the wire dtype (`planner.wire.WIRE_DTYPE`,
  uint8, which the planner charges as the input transfer), normalised on the worker; the worker
  answers features float32 (n * width + TRAILER): its own sub-models' features (unless
  primaries = 0: a request in flight whose failed device's slots alone are asked again), then
  those of the standby copies in the order asked, whose trailer holds `WorkerTimes` as float64
  values bit-packed into float32 pairs: its compute seconds for the request (so the aggregator
  can split a request's time into compute and communication without another message), the
  CPU time its process spent on them (under a CPU quota, what the quota charges), and the
  moments the images had arrived and the features were ready on its `time.perf_counter`
  (CLOCK_MONOTONIC on Linux: on one host, as in an emulated fleet, the aggregator can place
  them on its own timeline). n = 0 is a ping: no images, the answer is the times alone.
- REQUEST_ACKNOWLEDGED: the same, and the worker first sends a receipt (int64[1], tag
  RECEIPT_TAG) once the images are in, so the aggregator can send the input to one device after
  another (`RuntimeConfig.input_order`).
- CALIBRATE, n = batch size: the worker times its extractor alone on n blank images and answers
  float32[1], the median seconds.
- BYE: the worker leaves (exit code 0).

Requests are any size: a service batches whatever is waiting, a benchmark its fixed batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from planner import wire

REQUEST, CALIBRATE, BYE, REQUEST_ACKNOWLEDGED = 1, 2, 3, 4
CONTROL_LEN = 4
RECEIPT_TAG = 1  # receipts travel apart from features (tag 0): a posted feature receive never
# matches one
_TIMES = 4  # float64 values in a reply's trailer
TRAILER = 2 * _TIMES  # float32 slots they take
WIRE_DTYPE = getattr(torch, wire.WIRE_DTYPE)  # the images' dtype on the wire


@dataclass(frozen=True)
class Control:
    """What one control message asks: `op` on `n` images, the worker's own sub-models
    (`primaries`) and `standby` copies (their slot indices), whose list follows when not empty."""

    op: int
    n: int = 0
    primaries: bool = True
    standby: tuple[int, ...] = ()


def control(op: int, n: int = 0, primaries: bool = True,
            standby: tuple[int, ...] | list[int] = ()) -> list[torch.Tensor]:
    """The messages that open an exchange: the control, and the standby slots when any."""
    head = torch.tensor([op, n, int(primaries), len(standby)], dtype=torch.int64)
    return [head, torch.tensor(list(standby), dtype=torch.int64)] if standby else [head]


def empty_control() -> torch.Tensor:
    return torch.zeros(CONTROL_LEN, dtype=torch.int64)


def read_control(message: torch.Tensor, receive_slots) -> Control:
    """The control in `message`; `receive_slots(buffer)` fills the standby list that follows."""
    op, n, primaries, k = (int(v) for v in message.tolist())
    standby: tuple[int, ...] = ()
    if k:
        slots = torch.empty(k, dtype=torch.int64)
        receive_slots(slots)
        standby = tuple(int(v) for v in slots.tolist())
    return Control(op=op, n=n, primaries=bool(primaries), standby=standby)


def to_wire(pixels: torch.Tensor) -> torch.Tensor:
    """8-bit pixels as they are sent (no copy when they already are in the wire dtype)."""
    return pixels.to(WIRE_DTYPE).contiguous()


def image_buffer(batch: int, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """Where a worker receives one request's images."""
    return torch.empty(batch, *image_shape, dtype=WIRE_DTYPE)


@dataclass(frozen=True)
class WorkerTimes:
    """A worker's account of one request (seconds; the two moments on its perf_counter)."""

    compute_s: float
    input_arrived_at: float
    features_ready_at: float
    compute_cpu_s: float = 0.0  # its process's CPU time over compute_s (all threads)


def pack_features(features: torch.Tensor, times: WorkerTimes) -> torch.Tensor:
    """(b, width) features + the worker's times -> one flat float32 message."""
    flat = features.detach().to(torch.float32).reshape(-1)
    trailer = torch.tensor([times.compute_s, times.input_arrived_at, times.features_ready_at,
                            times.compute_cpu_s], dtype=torch.float64).view(torch.float32)
    return torch.cat([flat, trailer])


def reply_buffer(batch: int, width: int) -> torch.Tensor:
    return torch.empty(batch * width + TRAILER, dtype=torch.float32)


def unpack_features(message: torch.Tensor, batch: int,
                    width: int) -> tuple[torch.Tensor, WorkerTimes]:
    """The inverse of `pack_features`: (b, width) features and the worker's times."""
    values = message[-TRAILER:].clone().view(torch.float64).tolist()
    return message[:-TRAILER].view(batch, width), WorkerTimes(*values)
