"""Writing outputs: checked before any work, never onto an input, atomic.

Reading is `planner.reader`. While a command runs inside `guarding_inputs()`, every file the reader
reads is remembered, and `atomic_file` / `staged_directory` refuse to replace one of them (or a
directory holding one): no output ever destroys an input. `check_output` is the preflight the
commands run on their output paths before they start working.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

from planner.errors import InputError
from planner.reader import files_read


def check_output_path(path: str | Path, force: bool = True, field: str = "--out",
                      inputs: Iterable = ()) -> Path:
    """An output file passes `check_output` and may not (without `force`) exist."""
    path = check_output(path, field=field, inputs=inputs)
    if path.exists() and not force:
        raise InputError(OUTPUT_EXISTS, field=field, value=str(path))
    return path


def check_output_dir(path: str | Path, force: bool, field: str = "--out",
                     inputs: Iterable = ()) -> Path:
    """An output directory passes `check_output` and may exist only empty, unless `force` (then
    it is replaced whole)."""
    path = check_output(path, field=field, inputs=inputs, directory=True)
    if path.exists() and not (path.is_dir() and not any(path.iterdir())) and not force:
        raise InputError(OUTPUT_EXISTS, field=field, value=str(path))
    return path


OUTPUT_EXISTS = "output exists; pass --force to replace it"


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temporary sibling of `path` to write; when the block succeeds it is renamed onto `path`
    (readers never see half a file), on any error it is deleted."""
    path = Path(path)
    _refuse_special(path, "output")
    _refuse_inputs(path)
    _make_parent(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; outputs are ordinary files
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically (`atomic_file`), flushed to disk before the rename."""
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


@contextmanager
def staged_directory(target: str | Path) -> Iterator[Path]:
    """Fill a hidden sibling of `target`; on success it takes `target`'s place (an old `target` is
    removed only then), on any error it is deleted: readers never see half a directory, and a
    failed run leaves what the user had."""
    target = Path(target)
    _refuse_inputs(target)
    _make_parent(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        os.chmod(staging, 0o777 & ~_current_umask())  # mkdtemp makes 0700
        yield staging
        _replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replace_dir(staging: Path, target: Path) -> None:
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(target)


@contextmanager
def resumable_directory(target: str | Path, resume: bool) -> Iterator[tuple[Path, bool]]:
    """Like `staged_directory`, but the staging directory has a fixed name (`.NAME.partial`) and
    is kept when the block fails or is interrupted, so a rerun with `resume` continues in it.
    Yields (staging, resumed); without `resume` an old partial directory is cleared first. On
    success the staging directory takes `target`'s place in one rename."""
    target = Path(target)
    _refuse_inputs(target)
    _make_parent(target)
    staging = partial_dir(target)
    if os.path.islink(staging) or (os.path.lexists(staging) and not staging.is_dir()):
        raise InputError("is not the directory of an interrupted edvit run (a symbolic link, a "
                         "file, a FIFO?); remove it or choose another output", file=str(staging))
    _refuse_inputs(staging)  # cleared or moved into place: it may hold none of the inputs
    resumed = resume and staging.is_dir()
    if not resumed:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    yield staging, resumed
    _replace_dir(staging, target)


def partial_dir(target: str | Path) -> Path:
    """Where `resumable_directory` builds `target`: `.NAME.partial` beside it."""
    target = Path(target)
    return target.with_name(f".{target.name}.partial")


# -- checks before writing ------------------------------------------------------------------------
@contextmanager
def guarding_inputs() -> Iterator[set[Path]]:
    """Within the block, files read by `planner.reader` may not be replaced by an output."""
    token = files_read.set(set())
    try:
        yield files_read.get()
    finally:
        files_read.reset(token)


def check_output(path: str | Path, *, field: str = "--out", inputs: Iterable = (),
                 directory: bool = False) -> Path:
    """Refuse an output before any work: one that is a directory (or, for a `directory` output,
    a file), whose parent cannot be created or written, or that is (or, for a directory, holds)
    one of `inputs` or of the files read so far."""
    if not str(path).strip():
        raise InputError("empty output path", field=field)
    path = Path(path)
    if not directory and path.is_dir():
        raise InputError("output path is a directory", field=field, value=str(path))
    _refuse_special(path, field)
    if directory and path.exists() and not path.is_dir():
        raise InputError("output exists and is not a directory", field=field, value=str(path))
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"cannot create the output's folder: {ancestor} is not a directory",
                         field=field, value=str(path))
    _probe_writable(ancestor, field, path)
    given = {Path(p).resolve() for p in inputs if p is not None and str(p) and Path(p).exists()}
    _refuse_inputs(path, given, field=field)
    return path


def _refuse_special(path: Path, field: str) -> None:
    """A device, FIFO or socket is never replaced by a file (think of /dev/null)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise InputError("output exists and is not a regular file (a device, FIFO or socket)",
                         field=field, value=str(path))


def _probe_writable(folder: Path, field: str, path: Path) -> None:
    """Create and delete a file in `folder`: the one test that also holds for root, read-only file
    systems and pseudo file systems such as /proc."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".edvit-probe.", dir=folder)
    except OSError as exc:
        raise InputError(f"cannot write in {folder} ({exc.strerror or exc.__class__.__name__})",
                         field=field, value=str(path)) from None
    os.close(fd)
    os.unlink(probe)


def _refuse_inputs(path: Path, extra: set[Path] = frozenset(), field: str = "output") -> None:
    inputs = set(extra) | (files_read.get() or set())
    if not inputs:
        return
    target = path.resolve()
    for item in inputs:
        if item == target or (target.is_dir() and target in item.parents) or _same_file(item, path):
            raise InputError(f"would overwrite the input {item}; write to another path",
                             field=field, value=str(path))
        if item in target.parents and target.is_file() and item.is_dir():
            # a file inside an input folder may be what the command reads from it (weights, images)
            raise InputError(f"would replace a file inside the input folder {item}; write to "
                             "another path", field=field, value=str(path))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output's folder ({exc.strerror or exc})",
                         file=str(path.parent)) from None
