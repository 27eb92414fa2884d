"""`edvit classify --deploy`: the single-process reference of the service, no fleet.

The same steps as a served request, in one process: decode, the deployment's eval transform to
8-bit pixels, normalise, every sub-model and the fusion head (`FusedModel`), softmax, the same
`Classification` objects. Answers equal the service's (a test checks it on digits).
"""

from __future__ import annotations

from pathlib import Path

import torch

from planner.errors import InputError
from vit_ops.runtime.classification import (DEFAULT_TOP_K, Classification, class_names_of,
                                            classify_probabilities)
from vit_ops.runtime.source import FusedModel
from vit_ops.runtime.transform import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image, \
    eval_transform


class ReferenceClassifier:
    """A deployment directory (or source) classifying images here."""

    def __init__(self, source, top_k: int = DEFAULT_TOP_K) -> None:
        if isinstance(source, (str, Path)):
            from vit_ops.runtime.deployment import open_deployment

            source = open_deployment(source)
        self.transform = eval_transform(source)
        self.model = FusedModel(source)
        num_classes = int(self.model(torch.zeros(1, *source.image_shape())).shape[-1])
        self.class_names = class_names_of(source, num_classes)
        self.top_k = top_k

    def classify_pixels(self, pixels: torch.Tensor) -> list[Classification]:
        """uint8 images (N, C, H, W) at the model's size -> one answer each."""
        probabilities = torch.softmax(self.model(self.transform.normalize(pixels)), dim=-1)
        return classify_probabilities(probabilities, self.class_names, self.top_k)

    def classify_files(self, files: list[Path]) -> list[Classification]:
        return self.classify_pixels(torch.stack([self.read_pixels(f) for f in files]))

    def read_pixels(self, path: Path) -> torch.Tensor:
        """An image file as the service would see it: uint8 (C, H, W); InputError naming it."""
        try:
            with decode_image(Path(path).read_bytes(), DEFAULT_MAX_PIXELS) as image:
                return self.transform.pixels(image)
        except ImageDecodeError as exc:
            raise InputError(exc.message, file=str(path)) from None
