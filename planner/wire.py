"""What the runtime sends a device for one image, defined once for the runtime and the planner.

The aggregator sends every device that hosts a sub-model the whole image, as a tensor of
`WIRE_DTYPE` (C, H, W): 8-bit pixels, normalised on the worker (`vit_ops.runtime.transform`), a
quarter of float32's bytes and exact, since every image the runtime serves is 8-bit to begin with.
The runtime sends and receives that dtype (`vit_ops.runtime.protocol`); the planner charges
`input_bytes(...)` for each such send (the problem's `input_bytes`), so a change of the wire
format changes both at once. No torch here: the dtype is named by its string.
"""

from __future__ import annotations

WIRE_DTYPE = "uint8"   # what vit_ops.runtime sends
DTYPE_BYTES = {"uint8": 1, "float16": 2, "bfloat16": 2, "float32": 4}


def input_bytes(img_size: int | tuple[int, int], channels: int = 3,
                dtype: str = WIRE_DTYPE) -> int:
    """Bytes of one image on the wire: channels x H x W x bytes per element of `dtype`."""
    height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown wire dtype {dtype!r}; known: {', '.join(DTYPE_BYTES)}")
    return channels * height * width * DTYPE_BYTES[dtype]
