"""Device kinds: capabilities as data (YAML), kept apart from counts (an inventory).

The built-in catalog is `planner/catalog/devices.yaml`; an inventory may add kinds of its own
(inline or from a file written by `edvit calibrate`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator

from planner.errors import InputError
from planner.limits import Bytes, Name, PositiveBytes, Price, Rate, Seconds, Text
from planner.quota_curve import QuotaCurve
from planner.reader import read_yaml
from planner.schema_base import StrictModel
from planner.units import parse_bytes
from planner.validation import validate_document

CATALOG_PATH = Path(__file__).parent / "catalog" / "devices.yaml"


class DeviceKind(StrictModel):
    """What one device of a kind can do: the one device-kind type of the catalog, of inventories'
    `kinds:` and of `edvit calibrate`'s output."""

    name: Name | None = Field(default=None, description="the kind's own name, as `edvit "
                              "calibrate` writes it; in an inventory the `kinds:` key names it")
    description: Text = ""
    mem_bytes: PositiveBytes = Field(description="physical memory; accepts units, e.g. 4GiB")
    runtime_overhead_bytes: Bytes = Field(
        default=0, description="memory the OS and runtime take; accepts units")
    flops_per_s: Rate = Field(description="effective FLOP/s on ViT inference")
    overhead_s: Seconds = Field(description="fixed cost of one inference")
    link_bytes_per_s: Rate = Field(description="effective bandwidth to the aggregator")
    weight_bytes_per_s: Rate | None = Field(
        default=None, description="rate of reading weights (calibrated traffic model)")
    overhead_per_block_s: Seconds = Field(
        default=0.0, description="dispatch cost per transformer block (traffic model)")
    send_overhead_s: Seconds | None = Field(
        default=None, description="as an aggregator: fixed cost per input sent to a device "
                                  "(`edvit calibrate --input-bytes`; absent: 0)")
    hosting_send_overhead_s: Seconds | None = Field(
        default=None, description="as an aggregator: the same while it also runs a sub-model, "
                                  "whose worker shares its CPU (absent: send_overhead_s)")
    quota_curve: QuotaCurve | None = Field(
        default=None, description="[cpu_s, wall_s] points measured under the device's CPU quota "
                                  "(`edvit calibrate --clock quota`); with it the latency figures "
                                  "above are CPU time, and a sub-model takes the curve's wall time")
    cost_usd: Price | None = None

    @field_validator("mem_bytes", "runtime_overhead_bytes", mode="before")
    @classmethod
    def _sizes(cls, value):
        if value == 0:
            return 0
        return parse_bytes(value)

    @property
    def usable_mem_bytes(self) -> int:
        return self.mem_bytes - self.runtime_overhead_bytes


class Catalog(StrictModel):
    schema_version: int = 1
    kinds: dict[Name, DeviceKind]


@lru_cache(maxsize=1)
def builtin_catalog() -> Catalog:
    return load_catalog(CATALOG_PATH)


def load_catalog(path: str | Path) -> Catalog:
    return validate_document(Catalog, read_yaml(path), str(path))


def lookup_kind(name: str, extra: dict[str, DeviceKind] | None = None, *, source: str | None = None,
                field: str = "kind") -> DeviceKind:
    """A kind from the inventory's own kinds first, then the built-in catalog."""
    if extra and name in extra:
        return extra[name]
    kinds = builtin_catalog().kinds
    if name in kinds:
        return kinds[name]
    known = sorted(kinds) + sorted(extra or {})
    raise InputError(f"unknown device kind; known kinds: {', '.join(known)}", file=source,
                     field=field, value=name)
