"""The deployment's eval transform, split at the wire: 8-bit pixels here, floats on the worker.

An image file becomes the model's input in two steps, both from `vit_ops.preprocess.Preprocess` so
that serving and `edvit evaluate` see identical tensors: `pixels` (decode, RGB, resize and crop to
the model's size: uint8 (C, H, W)) runs where the image arrives, and `normalize` runs on each worker
after the 8-bit pixels crossed the wire (`planner.wire`). `eval_transform(source)` is the one place
that says which transform a deployment uses, so a recorded transform can replace the default there.

`decode_image` opens untrusted bytes: JPEG or PNG only, and refused before decoding when the header
announces more than `max_pixels` pixels (a decompression bomb) or a sliver whose resize would blow
up (`vit_ops.images.size_problem`, the data folders' rule), with a message naming the problem.
"""

from __future__ import annotations

import io

from pydantic import Field

from planner.errors import InputError
from vit_ops.images import size_problem
from vit_ops.preprocess import Preprocess

IMAGE_FORMATS = ("JPEG", "PNG")
DEFAULT_MAX_PIXELS = 4096 * 4096


class ImageDecodeError(InputError):
    """Bytes that are not a JPEG or PNG image this service accepts."""


class EvalTransform(Preprocess):
    """How one image becomes a model input: the deployment's recorded `Preprocess` (resize, crop,
    per-channel normalisation; `pixels` where the image arrives, `normalize` on the worker) and
    the model's input channels."""

    in_chans: int = Field(default=3, description="channels of the model input (RGB)")


def eval_transform(source) -> EvalTransform:
    """The eval transform of a deployment source: its own `eval_transform()` where it has one,
    else the default normalisation at its `image_shape()`."""
    if hasattr(source, "eval_transform"):
        return source.eval_transform()
    channels, size, _ = source.image_shape()
    return EvalTransform(img_size=size, in_chans=channels)


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "image"):
    """Untrusted bytes -> a loaded PIL image (ImageDecodeError naming the problem otherwise)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageDecodeError("empty body: expected a JPEG or PNG image", field=name)
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise ImageDecodeError(f"not a JPEG or PNG image (starts with {data[:8]!r})",
                               field=name) from None
    except Image.DecompressionBombError:  # PIL refuses more than 2x its limit at open already
        raise ImageDecodeError("image declares too many pixels (a decompression bomb?)",
                               field=name) from None
    if (problem := size_problem(*image.size, max_pixels)) is not None:
        raise ImageDecodeError(problem, field=name)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"cannot decode {image.format} image: {exc}", field=name) from None
    return image
