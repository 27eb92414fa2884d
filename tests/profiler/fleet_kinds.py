"""A calibrated device kind as `edvit calibrate --clock quota` writes one, for the tests that plan
on emulated fleets' kinds (its figures chosen, not measured)."""

from __future__ import annotations


def calibrated_kind(name: str, flops_per_s: float) -> dict:
    return {"name": name, "mem_bytes": 4 << 30, "flops_per_s": flops_per_s, "overhead_s": 0.002,
            "link_bytes_per_s": 1e6, "weight_bytes_per_s": 5e9, "overhead_per_block_s": 1e-3,
            "quota_curve": [[0.01, 0.012], [0.05, 0.12]]}
