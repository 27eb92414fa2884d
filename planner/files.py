"""Reading user files with clear errors, and writing outputs atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from planner.errors import InputError


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML (or JSON, a subset) file; errors name the file and the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("file not found", file=str(path)) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read file ({exc.__class__.__name__})", file=str(path)) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise InputError(f"malformed YAML{where}: {problem}", file=str(path)) from None


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("file not found", file=str(path)) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"malformed JSON at line {exc.lineno}: {exc.msg}",
                         file=str(path)) from None


def check_output_path(path: str | Path, force: bool = True, field: str = "--out") -> Path:
    """An output file may not be a directory, nor (without `force`) an existing file."""
    path = Path(path)
    if path.is_dir():
        raise InputError("output path is a directory", field=field, value=str(path))
    if path.exists() and not force:
        raise InputError(OUTPUT_EXISTS, field=field, value=str(path))
    return path


def check_output_dir(path: str | Path, force: bool, field: str = "--out") -> Path:
    """An output directory may exist only empty, unless `force` (then it is replaced whole)."""
    path = Path(path)
    if path.exists() and not (path.is_dir() and not any(path.iterdir())) and not force:
        raise InputError(OUTPUT_EXISTS, field=field, value=str(path))
    return path


OUTPUT_EXISTS = "output exists; pass --force to replace it"


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temporary sibling of `path` to write; when the block succeeds it is renamed onto `path`
    (readers never see half a file), on any error it is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    target.parent.mkdir(parents=True, exist_ok=True)
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
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.partial")
    resumed = resume and staging.is_dir()
    if not resumed:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    yield staging, resumed
    _replace_dir(staging, target)
