"""The runtime sends what the planner charges: one wire format, planner.wire."""

from __future__ import annotations

import torch

from planner import wire
from vit_ops.runtime import protocol


def test_runtime_sends_the_planners_wire_dtype():
    images = torch.rand(2, 3, 16, 16)
    sent = protocol.to_wire(images)
    assert sent.dtype == protocol.WIRE_DTYPE == getattr(torch, wire.WIRE_DTYPE)
    per_image = sent[0].numel() * sent.element_size()
    assert per_image == wire.input_bytes(16, 3, wire.WIRE_DTYPE)
    buffer = protocol.image_buffer(2, (3, 16, 16))
    assert buffer.dtype == sent.dtype and buffer.shape == sent.shape
