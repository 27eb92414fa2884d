"""Parsing sizes with units ("4GiB", "512MB", 1e9): the one place bytes are read from text."""

from __future__ import annotations

import math
import re

from planner.limits import MAX_BYTES

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$", re.ASCII)


def parse_bytes(value: int | float | str) -> int:
    """Bytes from an int, a float or a string with a unit (B, kB, MB, GB, KiB, MiB, GiB, ...)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 4GiB, got {value!r}")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        match = _SIZE.match(str(value))
        if not match or match.group(2).lower() not in _UNITS:
            raise ValueError(f"expected a size such as 4GiB or 512MB, got {value!r}")
        number, unit = float(match.group(1)), match.group(2).lower()
    number *= _UNITS[unit]
    if not math.isfinite(number) or number > MAX_BYTES:
        raise ValueError(f"size must be at most {MAX_BYTES // 2**40} TiB, got {value!r}")
    size = int(round(number))
    if size <= 0:
        raise ValueError(f"size must be positive, got {value!r}")
    return size
