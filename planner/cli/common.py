"""Helpers shared by the commands: JSON output, progress bars, output paths."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from planner.errors import InputError
from planner.progress import ProgressCallback


def print_json(data: Any) -> None:
    """One JSON object on stdout (machine-readable output of `--json`)."""
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


@contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator[ProgressCallback]:
    """A tqdm bar on stderr driven by the libraries' `progress(done, total, label)` callback."""
    if not enabled or not sys.stderr.isatty():
        yield lambda done, total, label="": None
        return
    from tqdm import tqdm

    bar = tqdm(desc=description, file=sys.stderr, leave=False, dynamic_ncols=True)

    def update(done: int, total: int, label: str = "") -> None:
        bar.total = total
        bar.n = done
        if label:
            bar.set_postfix_str(label, refresh=False)
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


def check_output_path(path: str | Path, force: bool = True) -> Path:
    """Refuse to write into a directory or, without force, over an existing file."""
    path = Path(path)
    if path.is_dir():
        raise InputError("output path is a directory", field="--out", value=str(path))
    if path.exists() and not force:
        raise InputError("output exists; pass --force to replace it", field="--out",
                         value=str(path))
    return path
