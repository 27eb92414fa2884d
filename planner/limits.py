"""The documented range of every number and name edvit reads, as reusable pydantic types.

Every float is finite. Every range is wide enough for any real fleet and model and small enough
that the integer scaling into CP-SAT (`planner.scaling`: picoseconds, bytes) stays far inside its
64-bit domain; `planner.problem` adds the checks that need several fields (the slowest sub-model,
the number of configurations the solver would enumerate). Counts are capped so that work stays
bounded; `--max-devices` raises the device cap where a fleet really is larger.

| quantity | range |
|---|---|
| seconds (overheads, budgets, latencies) | 0 .. 1e6 s |
| a makespan the solver may consider | <= 1e5 s (28 h) |
| time limit of a solve | 0 .. 1e6 s |
| bytes (memory, weights, features) | 0 .. 2**44 (16 TiB) |
| rates (FLOP/s, bytes/s) | 0 .. 1e18 per second |
| FLOPs of one inference | 0 .. 1e18 |
| accuracy loss | 0 .. 100 points |
| classes | 1 .. 100,000 |
| devices per inventory or problem | 1 .. 10,000 (`--max-devices` up to 1,000,000) |
| what-if scenarios per sweep | 200 (`--max-scenarios`, `--yes`), at most 10,000 |
| sub-models per device (`max_per_device`) | 1 .. 64 |
| keep ratios in a profile | 1 .. 64 |
| similarity entries | -1e6 .. 1e6 |
| seed | -2**31 .. 2**31 - 1 (CP-SAT's int32) |
| workers | 1 .. 256 |
| names (arch, kind, device) | 1-128 characters of `A-Za-z0-9_.+-`, starting with a letter or digit |
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import PurePosixPath
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field

MAX_SECONDS = 1e6
MAX_MAKESPAN_S = 1e5
MAX_BYTES = 2**44
MAX_RATE = 1e18
MAX_FLOPS = 10**18
MAX_LOSS_PP = 100.0
MAX_CLASSES = 100_000
DEFAULT_MAX_DEVICES = 10_000
MAX_PER_DEVICE = 64
MAX_RATIOS = 64
MAX_SIMILARITY = 10**6
MAX_SCENARIOS = 10_000   # what-if scenarios of one sweep, even with --yes
HARD_MAX_DEVICES = 1_000_000  # what --max-devices may allow
MAX_SEED = 2**31 - 1
MAX_WORKERS = 256
MAX_LOADER_WORKERS = 64  # DataLoader worker processes (each one a process holding a dataset copy)
MAX_TEXT = 512
# configurations the planner enumerates (device types x multisets of ratios), before memory
# filtering: ~300k take a few seconds; beyond that max_per_device or the ratios must shrink
MAX_CONFIGURATIONS = 300_000
MAX_IMAGE_SIZE = 2**16  # pixels a side of a model input
MAX_THREADS = 4096  # torch threads of one process
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$"


def ascii_count(text: str, max_digits: int = 18) -> int | None:
    """`text` as a non-negative integer when it is 1..`max_digits` ASCII digits, else None.
    (`str.isdigit` also takes '³' and other scripts' digits, which `int` then refuses.)"""
    if 0 < len(text) <= max_digits and text.isascii() and text.isdigit():
        return int(text)
    return None


_max_devices: ContextVar[int] = ContextVar("edvit_max_devices", default=DEFAULT_MAX_DEVICES)


def too_many_devices(total: int) -> str | None:
    """The refusal of a fleet of `total` devices, or None when it is within the cap."""
    if total <= max_devices():
        return None
    return (f"{total} devices in all, more than the limit of {max_devices()} "
            "(--max-devices raises it)")


def max_devices() -> int:
    """Devices one inventory or problem may hold (10,000, or what `allow_devices` set)."""
    return _max_devices.get()


@contextmanager
def allow_devices(limit: int | None) -> Iterator[None]:
    """Raise (or lower) the device cap for the block; None keeps it."""
    if limit is None:
        yield
        return
    token = _max_devices.set(limit)
    try:
        yield
    finally:
        _max_devices.reset(token)


def _not_a_bool(value):
    """YAML's `true` is not 1: pydantic's lax mode would read a boolean as a number."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got the boolean {str(value).lower()}")
    return value


NOT_BOOL = BeforeValidator(_not_a_bool)  # in every numeric type below, after its Field (so
# that pydantic's own finite and range messages still come first)

Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False), NOT_BOOL]
PositiveSeconds = Annotated[float, Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False), NOT_BOOL]
Rate = Annotated[float, Field(gt=0, le=MAX_RATE, allow_inf_nan=False), NOT_BOOL]
Bytes = Annotated[int, Field(ge=0, le=MAX_BYTES), NOT_BOOL]
PositiveBytes = Annotated[int, Field(gt=0, le=MAX_BYTES), NOT_BOOL]
Flops = Annotated[int, Field(ge=0, le=MAX_FLOPS), NOT_BOOL]
PositiveFlops = Annotated[int, Field(gt=0, le=MAX_FLOPS), NOT_BOOL]
LossPoints = Annotated[float, Field(ge=0, le=MAX_LOSS_PP, allow_inf_nan=False), NOT_BOOL]
KeepRatio = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False), NOT_BOOL]
Finite = Annotated[float, Field(allow_inf_nan=False), NOT_BOOL]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False), NOT_BOOL]
Price = Annotated[float, Field(ge=0, le=1e12, allow_inf_nan=False), NOT_BOOL]
ClassCount = Annotated[int, Field(gt=0, le=MAX_CLASSES), NOT_BOOL]
ClassId = Annotated[int, Field(ge=0, lt=MAX_CLASSES), NOT_BOOL]
GroupSize = Annotated[int, Field(ge=1, le=MAX_CLASSES), NOT_BOOL]
DeviceCount = Annotated[int, Field(ge=0, description="capped in total by max_devices()"),
                        NOT_BOOL]
PerDevice = Annotated[int, Field(gt=0, le=MAX_PER_DEVICE), NOT_BOOL]
SimilarityValue = Annotated[int, Field(ge=-MAX_SIMILARITY, le=MAX_SIMILARITY), NOT_BOOL]
Seed = Annotated[int, Field(ge=-MAX_SEED - 1, le=MAX_SEED, description="a 32-bit integer"),
                 NOT_BOOL]
Workers = Annotated[int, Field(ge=1, le=MAX_WORKERS), NOT_BOOL]
TimeLimit = Annotated[float, Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False), NOT_BOOL]
Name = Annotated[str, Field(pattern=NAME_PATTERN,
                            description="a name, never a path: 1-128 of A-Za-z0-9_.+-")]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
# model dimensions (ViT shapes and prune counts)
Dimension = Annotated[int, Field(gt=0, le=2**20), NOT_BOOL]
Depth = Annotated[int, Field(gt=0, le=1024), NOT_BOOL]
ImageSize = Annotated[int, Field(gt=0, le=MAX_IMAGE_SIZE), NOT_BOOL]
PositiveCount = Annotated[int, Field(gt=0, le=2**62), NOT_BOOL]


def _relative_inside(path: str) -> str:
    """A path a file names inside its own folder: relative and without '..' (where it resolves,
    symbolic links included, is `planner.reader.path_inside`)."""
    parts = PurePosixPath(path.replace("\\", "/")).parts
    if not path or path.startswith(("/", "\\", "~")) or ":" in path or ".." in parts:
        raise ValueError(f"must be a relative path inside its folder, got {path!r}")
    return path


RelativePath = Annotated[str, Field(max_length=MAX_TEXT), AfterValidator(_relative_inside)]
