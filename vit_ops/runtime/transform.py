"""The deployment's eval transform, split at the wire: 8-bit pixels here, floats on the worker.

An image file becomes the model's input in two steps, both from `vit_ops.data` so that serving and
`edvit evaluate` see identical tensors: `image_pixels` (decode, RGB, bilinear resize to the model's
size: uint8 (C, H, W)) runs where the image arrives, and `normalize_pixels` runs on each worker
after the 8-bit pixels crossed the wire (`planner.wire`). `eval_transform(source)` is the one place
that says which transform a deployment uses, so a recorded transform can replace the default there.

`decode_image` opens untrusted bytes: JPEG or PNG only, and refused before decoding when the header
announces more than `max_pixels` pixels (a decompression bomb), with a message naming the problem.
"""

from __future__ import annotations

import io

import torch
from pydantic import Field

from planner.errors import InputError
from planner.schema_base import FrozenModel
from vit_ops.data import NORM_MEAN, NORM_STD, image_pixels, normalize_pixels

IMAGE_FORMATS = ("JPEG", "PNG")
DEFAULT_MAX_PIXELS = 4096 * 4096


class ImageDecodeError(InputError):
    """Bytes that are not a JPEG or PNG image this service accepts."""


class EvalTransform(FrozenModel):
    """How one image becomes a model input (see the module docstring)."""

    img_size: int = Field(gt=0, description="square side the image is resized to, pixels")
    in_chans: int = Field(default=3, description="channels of the model input (RGB)")
    mean: float = NORM_MEAN
    std: float = NORM_STD

    def pixels(self, image) -> torch.Tensor:
        """A PIL image -> uint8 (C, H, W) at the model's size: what travels to the workers."""
        return image_pixels(image, self.img_size)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> the float32 model input (on the worker)."""
        return normalize_pixels(pixels, self.mean, self.std)

    def quantize(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised float images -> their uint8 pixels (exact for images that were 8-bit, as
        every image `vit_ops.data` loads is; others are rounded and clipped to 0..255)."""
        pixels = (images * self.std + self.mean) * 255.0
        return pixels.round().clamp(0, 255).to(torch.uint8).contiguous()


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
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(f"image of {width}x{height} pixels exceeds the limit of "
                               f"{max_pixels} pixels", field=name)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"cannot decode {image.format} image: {exc}", field=name) from None
    return image
