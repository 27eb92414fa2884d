"""vit_ops.data: splits as file lists, streamed decoding, held-out order, bad images (no training)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from planner.errors import InputError
from vit_ops.compute import Compute
from vit_ops.data import (
    DataArgs,
    batches,
    interleave_classes,
    load_data,
    make_split,
    read_image,
    relocate,
    splits_from_record,
)
from vit_ops.preprocess import scratch_preprocess


def test_digits_split_is_fixed_stratified_and_disjoint():
    a = load_data("digits", img_size=16)
    b = load_data("digits", img_size=16)
    assert a.class_names == [str(i) for i in range(10)]
    assert a.record == b.record  # the same file lists every time
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    files = [set(part.files.files) for part in (a.train, a.val, a.test)]
    assert not (files[0] & files[1] or files[0] & files[2] or files[1] & files[2])
    for split in (a.val, a.test):  # every class is held out in proportion
        counts = torch.bincount(split.labels, minlength=10)
        assert counts.min() >= 0.5 * counts.max()
    x, y = a.test.first(8)
    assert x.shape == (8, 3, 16, 16) and torch.equal(y, a.test.labels[:8])
    assert torch.equal(x, b.test.first(8)[0])


def test_held_out_images_are_class_interleaved():
    test = load_data("digits", img_size=16).test
    assert test.labels[:10].tolist() == list(range(10))  # the first 10 cover the 10 classes
    assert test.labels[10:20].tolist() == list(range(10))
    labels = np.array([0, 0, 0, 1, 2, 2])
    assert interleave_classes([0, 1, 2, 3, 4, 5], labels) == [0, 3, 4, 1, 5, 2]


def test_of_classes_is_an_index_list_over_the_same_files():
    test = load_data("digits", img_size=16).test
    part = test.of_classes([3, 7])
    assert set(part.labels.tolist()) == {3, 7}
    assert len(part) == int(((test.labels == 3) | (test.labels == 7)).sum())
    assert part.files is test.files  # no copy of the file list, let alone of images
    images, _ = part.first(2)
    whole, _ = test.first(len(test))
    assert torch.equal(images[0], whole[int(part.index[0])])


def _write_folder(root, classes, per_class=5, size=12):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_image_folder_loads_resized_images_and_class_names(tmp_path):
    _write_folder(tmp_path, ["cat", "dog", "emu"])
    splits = load_data(str(tmp_path), img_size=8, expected_classes=3,
                       class_names=["cat", "dog", "emu"])
    assert splits.class_names == ["cat", "dog", "emu"]
    assert len(splits.train) + len(splits.val) + len(splits.test) == 15
    x, y = splits.train.first(4)
    assert x.shape == (4, 3, 8, 8) and x.min() >= -1.0 and x.max() <= 1.0
    assert splits.train.files.files[0] == "cat/0.png"  # relative to the folder


def test_streamed_batches_equal_the_transform_of_each_file(tmp_path):
    _write_folder(tmp_path, ["a", "b"], per_class=6)
    splits = load_data(str(tmp_path), img_size=8)
    transform = splits.preprocess.transform()
    images, labels = next(batches(splits.train, batch_size=64))
    for k in range(len(splits.train)):
        path = tmp_path / splits.train.files.files[k]
        assert torch.equal(images[k], transform(Image.open(path).convert("RGB")))
    assert labels.tolist() == splits.train.files.labels


def test_presplit_folders_and_relocation(tmp_path):
    _write_folder(tmp_path / "train", ["cat", "dog"], per_class=4)
    _write_folder(tmp_path / "val", ["cat", "dog"], per_class=4)
    record = make_split(DataArgs(train=str(tmp_path / "train"), val=str(tmp_path / "val")))
    assert len(record.train.files) == 8
    assert len(record.val.files) + len(record.test.files) == 8  # no --test: half of val
    assert not set(record.val.files) & set(record.test.files)
    moved = tmp_path / "moved"
    moved.mkdir()
    (tmp_path / "train").rename(moved / "train")
    (tmp_path / "val").rename(moved / "val")
    with pytest.raises(InputError, match="missing"):
        splits_from_record(record, scratch_preprocess(8))
    again = relocate(record, DataArgs(train=str(moved / "train"), val=str(moved / "val")))
    assert again.test.files == record.test.files and again.test.root == str(moved / "val")
    assert len(splits_from_record(again, scratch_preprocess(8)).test) == len(record.test.files)


def test_presplit_class_sets_must_agree(tmp_path):
    _write_folder(tmp_path / "train", ["cat", "dog"])
    _write_folder(tmp_path / "val", ["cat", "emu"])
    with pytest.raises(InputError, match=r"--val=.*extra \['emu'\], missing \['dog'\]"):
        make_split(DataArgs(train=str(tmp_path / "train"), val=str(tmp_path / "val")))


def test_image_folder_missing_class_is_an_input_error(tmp_path):
    _write_folder(tmp_path, ["cat", "dog"])
    with pytest.raises(InputError, match="lacks classes"):
        load_data(str(tmp_path), img_size=8, expected_classes=3, class_names=["cat", "dog", "emu"])
    with pytest.raises(InputError, match="2 class folders, the model has 3"):
        load_data(str(tmp_path), img_size=8, expected_classes=3)


def test_image_folder_empty_class_and_missing_folder(tmp_path):
    _write_folder(tmp_path, ["cat"])
    (tmp_path / "dog").mkdir()
    with pytest.raises(InputError, match="dog: class folder holds no images"):
        load_data(str(tmp_path), img_size=8)
    with pytest.raises(InputError, match="not found"):
        load_data(str(tmp_path / "nope"), img_size=8)


def test_corrupt_truncated_and_oversized_images_name_the_file(tmp_path):
    _write_folder(tmp_path, ["cat", "dog"], per_class=3, size=32)
    truncated = tmp_path / "cat" / "0.png"
    truncated.write_bytes(truncated.read_bytes()[:200])
    (tmp_path / "dog" / "0.png").write_bytes(b"not a png at all")
    with pytest.raises(InputError, match="cat/0.png: cannot decode image"):
        read_image(truncated)
    with pytest.raises(InputError, match="dog/0.png: not an image"):
        read_image(tmp_path / "dog" / "0.png")
    with pytest.raises(InputError, match="32 x 32 pixels, more than the limit of 1000 pixels"):
        read_image(tmp_path / "cat" / "1.png", max_pixels=1000)
    sliver = tmp_path / "cat" / "2.png"  # few pixels, but its resize would be gigapixels
    Image.new("RGB", (1, 10_000)).save(sliver)
    with pytest.raises(InputError, match="cat/2.png: image is 1 x 10000 pixels, one side more "
                                         "than 100 times the other"):
        read_image(sliver)
    splits = load_data(str(tmp_path), img_size=8)
    with pytest.raises(InputError, match=r"/(cat|dog)/0\.png: "):  # raised from the loader
        for part in (splits.train, splits.val, splits.test):
            list(batches(part, batch_size=2))


def test_a_folder_too_small_for_a_held_out_split_is_an_input_error(tmp_path):
    _write_folder(tmp_path, ["cat", "dog"], per_class=1)
    with pytest.raises(InputError, match="too few images"):
        load_data(str(tmp_path), img_size=8)


def test_a_val_folder_too_small_to_hold_out_a_test_half_is_an_input_error(tmp_path):
    _write_folder(tmp_path / "train", ["cat", "dog"], per_class=3)
    _write_folder(tmp_path / "val", ["cat", "dog"], per_class=1)
    with pytest.raises(InputError, match="too few images for a held-out split") as info:
        load_data(DataArgs(train=str(tmp_path / "train"), val=str(tmp_path / "val")), img_size=8)
    assert "\n" not in str(info.value)


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
    bomb = tmp_path / "cat" / "bomb.png"
    _grey_png(bomb, width, height)
    with pytest.raises(InputError, match="bomb.png: .*decompression bomb"):
        read_image(bomb)
    splits = load_data(str(tmp_path), img_size=8)  # streamed: images are opened when loaded
    with pytest.raises(InputError, match="bomb.png: .*decompression bomb"):
        for part in (splits.train, splits.val, splits.test):
            list(batches(part, batch_size=2))


def test_folder_scan_is_torchvisions_order_and_follows_links(tmp_path):
    from torchvision.datasets.folder import find_classes, make_dataset

    from vit_ops.data import IMAGE_SUFFIXES, scan_folder

    _write_folder(tmp_path / "imgs", ["b", "a"], per_class=3, size=8)
    (tmp_path / "imgs" / "a" / "sub").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a" / "sub" / "Z.PNG")
    (tmp_path / "imgs" / "a" / "notes.txt").write_text("not an image")
    _write_folder(tmp_path / "elsewhere", ["x"], per_class=2, size=8)
    (tmp_path / "imgs" / "b" / "linked").symlink_to(tmp_path / "elsewhere" / "x")
    root = tmp_path / "imgs"
    names, files, labels = scan_folder(root, "--data")
    expected = make_dataset(str(root), find_classes(str(root))[1], extensions=IMAGE_SUFFIXES)
    assert names == ["a", "b"]
    assert [str(root / f) for f in files] == [p for p, _ in expected]
    assert labels.tolist() == [label for _, label in expected]


@pytest.mark.parametrize("links", [["."], [".."], ["..", "../..", ".."]])
def test_symbolic_link_loops_in_an_image_folder_are_refused_at_once(tmp_path, links):
    """torchvision's walk follows links without end (each extra link to an ancestor doubles it)."""
    from vit_ops.data import scan_folder

    _write_folder(tmp_path / "imgs", ["a", "b"], per_class=2, size=8)
    for i, target in enumerate(links):
        (tmp_path / "imgs" / "a" / f"loop{i}").symlink_to(target)
    with pytest.raises(InputError, match="link loop"):
        scan_folder(tmp_path / "imgs", "--train")


def test_an_image_that_is_a_fifo_or_device_is_refused_unopened(tmp_path):
    """Opening a FIFO blocks until someone writes to it: the loader hung on one."""
    import os

    os.mkfifo(tmp_path / "f.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    for name in ("f.png", "zero.png"):
        with pytest.raises(InputError, match="not a regular file"):
            read_image(tmp_path / name)


def test_folders_given_for_a_split_recorded_on_digits_are_refused_not_ignored():
    """`materialize --train DIR --val DIR` on a digits base silently used digits (exit 0, even
    for a --val folder that does not exist)."""
    record = make_split(DataArgs(data="digits"))
    assert relocate(record, DataArgs(data="digits")) == record
    for args in (DataArgs(train="tr", val="nope"), DataArgs(test="te"), DataArgs(data="imgs")):
        with pytest.raises(InputError, match="made on 'digits'"):
            relocate(record, args)


@pytest.mark.parametrize("crop_pct", [1e-6, 1e-300, 0.2])
def test_a_crop_pct_that_would_resize_to_a_giant_is_refused(crop_pct):
    """--crop-pct 1e-6 resized every 8 px image to 32 million pixels a side before cropping."""
    with pytest.raises(InputError, match="--crop-pct"):
        scratch_preprocess(32).with_overrides(crop_pct=crop_pct)
    assert scratch_preprocess(32).with_overrides(crop_pct=0.875).resize_size == 36


@pytest.mark.parametrize("workers", [-1, 100_000])
def test_loader_worker_counts_outside_their_range_are_refused(workers):
    with pytest.raises(InputError, match="--num-workers"):
        Compute.resolve("cpu", num_workers=workers)
    assert Compute.resolve("cpu", num_workers=64).num_workers == 64


def test_num_workers_out_of_range_is_one_line_exit_2(tmp_path):
    from tests.conftest import run_edvit

    result = run_edvit("train-base", "--out", str(tmp_path / "b"), "--num-workers", "100000")
    assert result.returncode == 2
    assert "--num-workers" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("batch", [0, -1, 2**40])
def test_an_evaluation_batch_outside_its_range_names_the_flag(batch):
    """evaluate's --batch-size has training's range (a batch of 2**40 images was accepted)."""
    with pytest.raises(InputError, match=r"--batch-size=.*must be 1\.\.1048576"):
        Compute.resolve("cpu", eval_batch_size=batch)
