"""vit_ops.data: the digits split and image folders (fast, no training)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from planner.errors import InputError
from vit_ops.data import augment, load_data


def test_digits_split_is_fixed_stratified_and_disjoint():
    a = load_data("digits", img_size=16)
    b = load_data("digits", img_size=16)
    assert a.class_names == [str(i) for i in range(10)]
    assert a.train.images.shape[1:] == (3, 16, 16)
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.test.labels, b.test.labels)
    for split in (a.val, a.test):  # every class is held out in proportion
        counts = torch.bincount(split.labels, minlength=10)
        assert counts.min() >= 0.5 * counts.max()
    # no image of the test split also appears in train
    train = {tuple(x.flatten().tolist()) for x in a.train.images[:, 0, ::4, ::4]}
    dupes = sum(tuple(x.flatten().tolist()) in train for x in a.test.images[:, 0, ::4, ::4])
    assert dupes < 0.05 * len(a.test)


def test_of_classes_keeps_only_those_labels():
    test = load_data("digits", img_size=16).test
    part = test.of_classes([3, 7])
    assert set(part.labels.tolist()) == {3, 7}
    assert len(part) == int(((test.labels == 3) | (test.labels == 7)).sum())


def _write_folder(root, classes, per_class=5):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_image_folder_loads_resized_images_and_class_names(tmp_path):
    _write_folder(tmp_path, ["cat", "dog", "emu"])
    splits = load_data(str(tmp_path), img_size=8, expected_classes=3,
                       class_names=["cat", "dog", "emu"])
    assert splits.class_names == ["cat", "dog", "emu"]
    assert splits.train.images.shape[1:] == (3, 8, 8)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 15
    assert splits.train.images.min() >= -1.0 and splits.train.images.max() <= 1.0


def test_image_folder_missing_class_is_an_input_error(tmp_path):
    _write_folder(tmp_path, ["cat", "dog"])
    with pytest.raises(InputError, match="lacks classes"):
        load_data(str(tmp_path), img_size=8, expected_classes=3, class_names=["cat", "dog", "emu"])
    with pytest.raises(InputError, match="2 classes, the model has 3"):
        load_data(str(tmp_path), img_size=8, expected_classes=3)


def test_image_folder_empty_class_and_missing_folder(tmp_path):
    _write_folder(tmp_path, ["cat"])
    (tmp_path / "dog").mkdir()
    with pytest.raises(InputError, match="no images"):
        load_data(str(tmp_path), img_size=8)
    with pytest.raises(InputError, match="not found"):
        load_data(str(tmp_path / "nope"), img_size=8)


def test_augment_is_seeded_translation():
    images = load_data("digits", img_size=16).test.images[:8]
    one = augment(images, torch.Generator().manual_seed(1), 2)
    two = augment(images, torch.Generator().manual_seed(1), 2)
    assert torch.equal(one, two) and one.shape == images.shape
    assert not torch.equal(one, images)
    # a translation moves pixels, never invents brighter ones or changes the background
    assert (one.amax(dim=(1, 2, 3)) <= images.amax(dim=(1, 2, 3)) + 1e-6).all()
    assert torch.equal(one.amin(dim=(1, 2, 3)), images.amin(dim=(1, 2, 3)))


def test_a_folder_too_small_for_a_held_out_split_is_an_input_error(tmp_path):
    _write_folder(tmp_path, ["cat", "dog"], per_class=1)
    with pytest.raises(InputError, match="too few images"):
        load_data(str(tmp_path), img_size=8)


def _grey_png(path, width: int, height: int) -> None:
    """A PNG whose header declares width x height pixels; the rows compress to almost nothing."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    body = zlib.compress(b"\x00" * (width + 1) * 4)  # a few rows: the decoder never gets there
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body)
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("width,height", [(30_000, 30_000), (65_000, 65_000)])
def test_decompression_bombs_are_refused_unread(tmp_path, width, height):
    _write_folder(tmp_path, ["cat", "dog"])
    _grey_png(tmp_path / "cat" / "bomb.png", width, height)
    with pytest.raises(InputError, match="decompression bomb"):
        load_data(str(tmp_path), img_size=8)
