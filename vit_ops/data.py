"""Image classification data streamed through `torch.utils.data`, split once into train / val / test.

Sources: `"digits"` (scikit-learn's bundled 8x8 handwritten digits, nothing downloaded), one image
folder (`--data DIR`, one sub-folder per class, split stratified with the fixed `SPLIT_SEED`), or a
pre-split layout (`--train DIR --val DIR [--test DIR]`; without a test folder the val folder is
split in half). Images are decoded per batch by `DataLoader` workers and transformed with the
model's `Preprocess`, so memory does not grow with the number of images.

The split is a `SplitRecord` of file lists (`split.json`), written next to a base model and into a
deployment: every command reads the same held-out images, whatever folder path the data has on
this machine (`relocate`). Validation and test lists are class-interleaved (the first N images cover
the classes). Subsets (`ImageSet.of_classes`, `first`) are index lists over the same files;
`ImageSet.augmented` is the same files through a training transform (`vit_ops.augment`).

Every image is 8-bit pixels first (`Preprocess.pixels`), normalised by `Preprocess.normalize`: the
runtime sends the same 8-bit pixels to its workers and normalises them there with the same
function, so a served image gives the features it gives here, bit for bit.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
import torch
from pydantic import Field

from planner.schema_base import FrozenModel, StrictModel
from planner.errors import InputError
from vit_ops.images import MAX_IMAGE_PIXELS, open_image
from vit_ops.compute import CPU, Compute, default_workers
from vit_ops.augment import TrainAugment
from vit_ops.preprocess import Preprocess, scratch_preprocess

log = logging.getLogger(__name__)

DIGITS = "digits"
SPLIT_FILE = "split.json"
SPLIT_SEED = 0
VAL_FRACTION = 0.15
TEST_FRACTION = 0.2
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
NORM_MEAN = 0.5  # the from-scratch models' normalisation (`scratch_preprocess`)
NORM_STD = 0.5
SplitName = Literal["train", "val", "test"]


class FileList(StrictModel):
    """Images of one split: paths relative to `root` (digits: sample indices) and labels."""


    root: str = Field(description="absolute folder of the images, or 'digits'")
    files: list[str]
    labels: list[int]


class SplitRecord(StrictModel):
    """`split.json`: which image is in which split (file lists, so every command agrees)."""


    schema_version: Literal[1] = 1
    source: str = Field(description="what the user passed: 'digits', a folder, or train/val/test")
    class_names: list[str]
    seed: int = SPLIT_SEED
    train: FileList
    val: FileList
    test: FileList

    def part(self, name: SplitName) -> FileList:
        return getattr(self, name)

    @property
    def roots(self) -> set[str]:
        return {self.train.root, self.val.root, self.test.root}


# ---------------------------------------------------------------- decoding one image

class _DigitsPixels:
    """scikit-learn's digits as (1797, 8, 8) uint8 images scaled to 0..255 (loaded once)."""

    _cache: tuple[np.ndarray, np.ndarray, list[str]] | None = None

    @classmethod
    def get(cls) -> tuple[np.ndarray, np.ndarray, list[str]]:
        if cls._cache is None:
            try:
                from sklearn.datasets import load_digits as sk_load_digits
            except ModuleNotFoundError:
                raise InputError("the digits data set needs scikit-learn (pip install "
                                 "'edvit[data]')", field="--data", value=DIGITS) from None
            bunch = sk_load_digits()
            pixels = np.clip(np.round(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
            cls._cache = (pixels, bunch.target.astype(np.int64),
                          [str(int(n)) for n in bunch.target_names])
        return cls._cache


def read_image(path: str | Path, max_pixels: int | None = None):
    """Decode `path` to an RGB PIL image through `vit_ops.images.open_image` (size and
    decompression-bomb limits checked from the header, before decoding); `max_pixels` is a
    tighter limit. A problem is an InputError naming the file."""
    path = Path(path)
    with open_image(path, max_pixels or MAX_IMAGE_PIXELS) as img:  # header only so far
        img.load()  # decodes: a truncated file fails here (open_image names it)
        return img.convert("RGB")


# ---------------------------------------------------------------- datasets

class ImageSet(torch.utils.data.Dataset):
    """Images of one split (or a subset of it, by index list), decoded on access.

    `__getitem__` returns `(image, label, problem)`: a decoding problem travels back from the
    loader's worker as text (`problem`, empty when fine) and `batches` raises it as one InputError
    in the main process.
    """

    def __init__(self, files: FileList, preprocess: Preprocess,
                 index: np.ndarray | None = None, augment: TrainAugment | None = None) -> None:
        self.files = files
        self.preprocess = preprocess
        self.augment = augment
        self.index = np.arange(len(files.files)) if index is None else np.asarray(index)
        self._labels = torch.as_tensor(np.asarray(files.labels, dtype=np.int64)[self.index]
                                       if len(files.labels) else np.zeros(0, np.int64))
        self._geometry = None
        self._train_transform = None

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @property
    def labels(self) -> torch.Tensor:
        """Labels (N,) int64, known without decoding an image."""
        return self._labels

    def __getstate__(self) -> dict:  # the transform is rebuilt in each worker
        state = dict(self.__dict__)
        state["_geometry"] = state["_train_transform"] = None
        return state

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        position = int(self.index[i])
        label = int(self.files.labels[position])
        if self._geometry is None:
            self._geometry = self.preprocess.geometry()
        try:
            image = self._decode(self.files.files[position])
        except InputError as exc:
            size = self.preprocess.img_size
            return torch.zeros(3, size, size), label, exc.one_line()
        if self.augment is not None:
            if self._train_transform is None:
                self._train_transform = self.augment.transform(self.preprocess)
            return self._train_transform(image), label, ""
        pixels = self.preprocess.pixels(image, self._geometry)
        return self.preprocess.normalize(pixels), label, ""

    def _decode(self, name: str):
        if self.files.root == DIGITS:
            from PIL import Image

            pixels = _DigitsPixels.get()[0][int(name)]
            return Image.fromarray(pixels, mode="L").convert("RGB")
        return read_image(os.path.join(self.files.root, name))

    def subset(self, positions: Sequence[int] | np.ndarray) -> "ImageSet":
        """The images at `positions` of this set (an index list; nothing is decoded or copied)."""
        return ImageSet(self.files, self.preprocess, self.index[np.asarray(positions, dtype=int)],
                        self.augment)

    def augmented(self, augment: TrainAugment | None) -> "ImageSet":
        """The same images decoded through the training transform of `augment` (timm's, random
        per access; None: the eval transform)."""
        return ImageSet(self.files, self.preprocess, self.index, augment)

    def of_classes(self, classes: Sequence[int]) -> "ImageSet":
        """The images whose label is one of `classes` (labels unchanged), in this set's order."""
        keep = np.flatnonzero(np.isin(self._labels.numpy(), np.asarray(list(classes))))
        return self.subset(keep)

    def head(self, n: int) -> "ImageSet":
        return self.subset(np.arange(min(n, len(self))))

    def first(self, n: int | None = None, compute: Compute = CPU
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `n` images (all when None) decoded into one (n, 3, H, W) tensor, and labels.
        For small, bounded numbers of images (calibration, ONNX checks, serving N images)."""
        part = self if n is None else self.head(n)
        images, labels = [], []
        for x, y in batches(part, compute.eval_batch_size, compute):
            images.append(x.cpu())
            labels.append(y.cpu())
        if not images:
            size = self.preprocess.img_size
            return torch.zeros(0, 3, size, size), torch.zeros(0, dtype=torch.int64)
        return torch.cat(images), torch.cat(labels)


class EpochShuffle(torch.utils.data.Sampler):
    """A permutation per epoch drawn from (seed, epoch): the same order whatever the workers."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n


def make_loader(dataset: torch.utils.data.Dataset, batch_size: int, compute: Compute = CPU,
                sampler: torch.utils.data.Sampler | None = None,
                persistent: bool = False, seed: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader with the compute's workers and pinned memory (on CUDA); its workers' `torch`
    and `random` (the training transform's randomness) are seeded from `seed`."""
    workers = 0
    if isinstance(dataset, ImageSet):  # the built-in digits are in memory: no workers
        workers = compute.num_workers
        if workers is None:
            workers = 0 if dataset.files.root == DIGITS else default_workers()
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
        pin_memory=compute.pin_memory, persistent_workers=persistent and workers > 0,
        generator=torch.Generator().manual_seed(seed))


def checked(loader: torch.utils.data.DataLoader, compute: Compute = CPU
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) on the compute device; a decoding problem of any image is an InputError."""
    for batch in loader:
        if len(batch) == 3:
            images, labels, problems = batch
            bad = next((p for p in problems if p), None)
            if bad:
                raise InputError(bad)
        else:
            images, labels = batch
        yield compute.put(images), compute.put(labels)


def batches(dataset: torch.utils.data.Dataset, batch_size: int, compute: Compute = CPU
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One pass over `dataset` in order."""
    return checked(make_loader(dataset, batch_size, compute), compute)


@dataclass(frozen=True)
class DataSplits:
    """The three splits, their record (for `split.json`) and the transform they are decoded with."""

    record: SplitRecord
    preprocess: Preprocess
    train: ImageSet
    val: ImageSet
    test: ImageSet

    @property
    def source(self) -> str:
        return self.record.source

    @property
    def class_names(self) -> list[str]:
        return list(self.record.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.record.class_names)

    @property
    def img_size(self) -> int:
        return self.preprocess.img_size


def splits_from_record(record: SplitRecord, preprocess: Preprocess,
                       check_files: bool = True) -> DataSplits:
    """DataSplits over the files of `record` (each must exist: InputError naming the first not)."""
    if check_files:
        for name in ("train", "val", "test"):
            part = record.part(name)
            if part.root == DIGITS:
                continue
            for rel in part.files:
                if not os.path.isfile(os.path.join(part.root, rel)):
                    raise InputError(f"image of the recorded {name} split is missing (data "
                                     "moved? pass its folder with --data)",
                                     file=os.path.join(part.root, rel))
    return DataSplits(record, preprocess, *(ImageSet(record.part(n), preprocess)
                                            for n in ("train", "val", "test")))


# ---------------------------------------------------------------- making a split

class DataArgs(FrozenModel):
    """Where the user's images are: `data` (digits or one folder) or train / val [/ test]."""


    data: str | None = None
    train: str | None = None
    val: str | None = None
    test: str | None = None

    @property
    def given(self) -> bool:
        return any((self.data, self.train, self.val, self.test))


def make_split(args: DataArgs) -> SplitRecord:
    """A new seeded split of the data `args` names (InputError for bad folders)."""
    if args.data and (args.train or args.val or args.test):
        raise InputError("pass either --data or --train/--val[/--test], not both", field="--data",
                         value=args.data)
    if args.data == DIGITS:
        _, labels, names = _DigitsPixels.get()
        files = [str(i) for i in range(labels.shape[0])]
        return _stratified_record(DIGITS, DIGITS, names, files, labels)
    if args.data:
        root = _folder(args.data, "--data")
        names, files, labels = scan_folder(root, "--data")
        return _stratified_record(args.data, str(root), names, files, labels)
    if not (args.train and args.val):
        raise InputError("give --data DIR (or 'digits'), or both --train DIR and --val DIR",
                         field="--train" if not args.train else "--val")
    return _presplit_record(args)


def scan_folder(root: Path, flag: str) -> tuple[list[str], list[str], np.ndarray]:
    """Class names (sorted sub-folders), image paths relative to `root` and labels, by torchvision's
    ImageFolder rules; an empty class folder is an InputError naming it."""
    from torchvision.datasets.folder import find_classes

    try:
        names, class_to_idx = find_classes(str(root))
    except FileNotFoundError:
        raise InputError("image folder has no class sub-folders", field=flag,
                         value=str(root)) from None
    samples = [(path, class_to_idx[name]) for name in names
               for path in _class_images(root / name)]
    counts = np.bincount([label for _, label in samples], minlength=len(names))
    empty = [names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise InputError("class folder holds no images (" + ", ".join(IMAGE_SUFFIXES) + ")",
                         file=str(root / empty[0]))
    files = [os.path.relpath(path, root) for path, _ in samples]
    return names, files, np.asarray([label for _, label in samples], dtype=np.int64)


def _class_images(folder: Path) -> list[str]:
    """The image files under one class folder in torchvision's `make_dataset` order (folders
    sorted by path, files by name; symbolic links followed). A folder reached a second time
    through a symbolic link is an InputError: a link loop would make the walk endless, and links
    that fan out again and again exponential."""
    seen: set[tuple[int, int]] = set()
    found: list[tuple[str, list[str]]] = []
    for dirpath, _, filenames in os.walk(folder, followlinks=True):
        try:
            info = os.stat(dirpath)
        except OSError:
            continue
        key = (info.st_dev, info.st_ino)
        if key in seen:
            raise InputError("a symbolic link leads back to a folder already scanned (a link "
                             "loop?); image folders must be trees", file=dirpath)
        seen.add(key)
        found.append((dirpath, filenames))
    return [os.path.join(dirpath, name) for dirpath, filenames in sorted(found)
            for name in sorted(filenames) if name.lower().endswith(IMAGE_SUFFIXES)]


def _folder(path: str, flag: str) -> Path:
    root = Path(path)
    if not root.is_dir():
        raise InputError("image folder not found (expected 'digits' or a folder with one "
                         "sub-folder per class)", field=flag, value=path)
    return root.resolve()


def stratified_indices(labels: np.ndarray, num_classes: int, fractions: Sequence[float],
                       seed: int = SPLIT_SEED) -> list[list[int]]:
    """Per class, shuffled with `seed`, the first round(f x n) indices go to each held-out part
    (in order); the rest to the first list. A class too small for one image of each stays whole."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for label in range(num_classes):
        idx = np.flatnonzero(labels == label)
        rng.shuffle(idx)
        sizes = [int(round(f * len(idx))) for f in fractions]
        if len(idx) - sum(sizes) < 1:
            sizes = [0] * len(sizes)
        start = 0
        for k, size in enumerate(sizes):
            parts[k + 1].extend(int(i) for i in idx[start:start + size])
            start += size
        parts[0].extend(int(i) for i in idx[start:])
    return parts


def interleave_classes(indices: Sequence[int], labels: np.ndarray) -> list[int]:
    """`indices` reordered round-robin over classes (each class in index order): the first N
    images cover min(N, C) classes."""
    by_class: dict[int, list[int]] = {}
    for i in sorted(indices):
        by_class.setdefault(int(labels[i]), []).append(i)
    queues = [by_class[c] for c in sorted(by_class)]
    out: list[int] = []
    for rank in range(max((len(q) for q in queues), default=0)):
        out.extend(q[rank] for q in queues if rank < len(q))
    return out


def _file_list(root: str, files: Sequence[str], labels: np.ndarray, idx: Sequence[int]
               ) -> FileList:
    return FileList(root=root, files=[files[i] for i in idx], labels=[int(labels[i]) for i in idx])


def _stratified_record(source: str, root: str, names: list[str], files: list[str],
                       labels: np.ndarray) -> SplitRecord:
    train, test, val = stratified_indices(labels, len(names), [TEST_FRACTION, VAL_FRACTION])
    record = SplitRecord(
        source=source, class_names=names,
        train=_file_list(root, files, labels, sorted(train)),
        val=_file_list(root, files, labels, interleave_classes(val, labels)),
        test=_file_list(root, files, labels, interleave_classes(test, labels)))
    _check_held_out(record, labels, len(names), "--data")
    _log(record)
    return record


def _presplit_record(args: DataArgs) -> SplitRecord:
    folders = {"--train": args.train, "--val": args.val, **({"--test": args.test} if args.test
                                                              else {})}
    scanned = {flag: (_folder(path, flag), *scan_folder(_folder(path, flag), flag))
               for flag, path in folders.items()}
    names = scanned["--train"][1]
    for flag, (root, other, _, _) in scanned.items():
        if other != names:
            extra = sorted(set(other) - set(names))
            missing = sorted(set(names) - set(other))
            raise InputError(f"class folders differ from --train {scanned['--train'][0]}: "
                             f"extra {extra}, missing {missing}", field=flag, value=str(root))
    train_root, _, train_files, train_labels = scanned["--train"]
    val_root, _, val_files, val_labels = scanned["--val"]
    if "--test" in scanned:
        test_root, _, test_files, test_labels = scanned["--test"]
        val_idx, test_idx = list(range(len(val_files))), list(range(len(test_files)))
    else:  # no test folder: half of val is held out for testing
        val_idx, test_idx = stratified_indices(val_labels, len(names), [0.5])
        test_root, test_files, test_labels = val_root, val_files, val_labels
    record = SplitRecord(
        source=" ".join(f"{flag} {path}" for flag, path in folders.items()), class_names=names,
        train=_file_list(str(train_root), train_files, train_labels, range(len(train_files))),
        val=_file_list(str(val_root), val_files, val_labels,
                       interleave_classes(val_idx, val_labels)),
        test=_file_list(str(test_root), test_files, test_labels,
                        interleave_classes(test_idx, test_labels)))
    _check_held_out(record, test_labels if "--test" in scanned else val_labels, len(names),
                    "--test" if "--test" in scanned else "--val")
    _log(record)
    return record


def _check_held_out(record: SplitRecord, labels: np.ndarray, num_classes: int, flag: str) -> None:
    """An empty held-out (test) split is one InputError, not a crash later in evaluation."""
    if record.test.files:
        return
    largest = int(np.bincount(labels, minlength=num_classes).max()) if len(labels) else 0
    need = "give each class at least 3 images" if flag == "--data" else \
        "give each class at least 2 images in --val, or pass --test"
    raise InputError(f"too few images for a held-out split (largest class: {largest}); {need}",
                     field=flag, value=record.source)


def _log(record: SplitRecord) -> None:
    log.info("%s: %d train, %d val, %d test images, %d classes", record.source,
             len(record.train.files), len(record.val.files), len(record.test.files),
             len(record.class_names))


def relocate(record: SplitRecord, args: DataArgs) -> SplitRecord:
    """`record` with its roots replaced by the folders of `args` (the same relative file lists):
    the recorded held-out images, wherever the data lives on this machine."""
    if not args.given or record.roots == {DIGITS}:
        if record.roots == {DIGITS}:  # --train/--val/--test would be ignored: say so
            for flag, value in (("--data", args.data), ("--train", args.train),
                                ("--val", args.val), ("--test", args.test)):
                if value not in (None, DIGITS) or (flag != "--data" and value is not None):
                    raise InputError("the model was made on 'digits'", field=flag, value=value)
        return record
    if args.data:
        if len(record.roots) != 1:
            raise InputError("the split was recorded from --train/--val folders; pass those",
                             field="--data", value=args.data)
        root = str(_folder(args.data, "--data"))
        new = {n: root for n in ("train", "val", "test")}
    else:
        old = {n: record.part(n).root for n in ("train", "val", "test")}
        given = {"train": args.train, "val": args.val, "test": args.test}
        new = {n: str(_folder(given[n], f"--{n}")) if given[n] else old[n] for n in old}
        if not args.test and args.val and old["test"] == old["val"]:
            new["test"] = new["val"]
    update = {n: record.part(n).model_copy(update={"root": new[n]}) for n in new}
    return record.model_copy(update=update)


def check_classes(record: SplitRecord, expected: int | None = None,
                  class_names: Sequence[str] | None = None, what: str = "the model") -> None:
    """The data's classes must be the model's: InputError naming the data and the difference."""
    where = record.source
    if class_names is not None and record.roots != {DIGITS}:
        names = list(record.class_names)
        missing = [n for n in class_names if n not in names]
        extra = [n for n in names if n not in class_names]
        if missing:
            raise InputError(f"image folder lacks classes {missing} of {what}", field="--data",
                             value=where)
        if extra or names != list(class_names):
            raise InputError(f"image folder has extra classes {extra}", field="--data",
                             value=where)
    if expected is not None and len(record.class_names) != expected:
        raise InputError(f"data has {len(record.class_names)} class folders, {what} has "
                         f"{expected} outputs", field="--data", value=where)


def load_data(spec: str | DataArgs, img_size: int | None = None,
              expected_classes: int | None = None, class_names: list[str] | None = None,
              preprocess: Preprocess | None = None) -> DataSplits:
    """A new split of `"digits"`, a folder, or `DataArgs`, decoded with `preprocess` (default:
    the whole image resized to `img_size`, mean = std = 0.5; digits default 32 px)."""
    args = spec if isinstance(spec, DataArgs) else DataArgs(data=spec)
    if preprocess is None:
        if img_size is None and args.data != DIGITS:
            raise InputError("an image folder needs the model's image size", field="--data",
                             value=args.data)
        preprocess = scratch_preprocess(img_size or 32)
    record = make_split(args)
    check_classes(record, expected_classes, class_names)
    return splits_from_record(record, preprocess, check_files=False)


def image_pixels(image, img_size: int) -> torch.Tensor:
    """A PIL image as a from-scratch model sees it before normalising: uint8 (3, H, W)."""
    return scratch_preprocess(img_size).pixels(image)


def normalize_pixels(pixels: torch.Tensor, mean: float = NORM_MEAN,
                     std: float = NORM_STD) -> torch.Tensor:
    """uint8 images (N, C, H, W) -> float32 `(x / 255 - mean) / std` (one mean and std)."""
    return ((pixels.to(torch.float32) / 255.0 - mean) / std).contiguous()
