"""A disk cache of profiled variants, keyed by everything that changes the result.

The key is the SHA-256 of a canonical JSON of the inputs (model shape, counts, dtype, batch size,
profiler method version, torch/timm/fvcore versions and, for timed variants, the host and thread
count). A changed input is a different key, so a stale entry is never returned; an unreadable
entry counts as a miss. Default location: `$EDVIT_CACHE_DIR`, else `~/.cache/edvit/profiles`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from planner.errors import EdvitError
from planner.files import write_json_atomic

logger = logging.getLogger(__name__)

CACHE_ENV = "EDVIT_CACHE_DIR"


def default_cache_dir() -> Path:
    """`$EDVIT_CACHE_DIR` if set, else `~/.cache/edvit/profiles`."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "edvit" / "profiles"


def cache_key(inputs: dict[str, Any]) -> str:
    """Hex SHA-256 of `inputs` as canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ProfileCache:
    """JSON entries under `directory`, one file per key; `hits`/`misses` count lookups."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            data = None
        except (OSError, ValueError) as exc:  # JSON or UTF-8 errors: a corrupt entry
            logger.warning("ignoring unreadable cache entry %s (%s)", path, exc)
            data = None
        if isinstance(data, dict):
            self.hits += 1
            return data
        self.misses += 1
        return None

    def put(self, key: str, data: dict[str, Any]) -> None:
        try:
            write_json_atomic(self._path(key), data)
        except (OSError, EdvitError) as exc:  # a read-only home must not stop profiling
            logger.warning("cannot write cache entry under %s (%s)", self.directory, exc)
