"""Device latency models and their least-squares fits (pure numbers: no torch here).

The planner's model (what a device kind carries):

    latency_s = flops / flops_per_s + overhead_s

`flops_per_s` is the effective rate a device reaches on ViT inference (far below its peak) and
`overhead_s` the fixed cost of one inference. It predicts variants of one model at one input size
well, but at batch 1 every weight is read from memory once per inference, and with few tokens (a
small input image) that traffic, not arithmetic, sets the time; dispatch costs also grow with depth.
The traffic model adds those two terms:

    latency_s = flops / flops_per_s + weight_bytes / weight_bytes_per_s
                + depth * overhead_per_block_s

Both are fitted by least squares on the relative residual (each row divided by its measured
latency, so a 5 ms variant weighs as much as a 500 ms one) with every coefficient kept >= 0: a
term whose best coefficient is negative is dropped and the rest refitted.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from planner.errors import InputError


@dataclass(frozen=True)
class LatencyFit:
    """latency_s = flops / flops_per_s + overhead_s."""

    flops_per_s: float
    overhead_s: float

    def predict_s(self, flops: float) -> float:
        """Predicted latency in seconds of one inference of `flops` FLOPs."""
        return flops / self.flops_per_s + self.overhead_s


@dataclass(frozen=True)
class TrafficFit:
    """latency_s = flops / flops_per_s + weight_bytes / weight_bytes_per_s + depth x per-block.

    A rate of `inf` means the fit dropped that term (its best coefficient was negative).
    """

    flops_per_s: float
    weight_bytes_per_s: float
    overhead_per_block_s: float

    def predict_s(self, flops: float, weight_bytes: float, depth: int) -> float:
        return (flops / self.flops_per_s + weight_bytes / self.weight_bytes_per_s
                + depth * self.overhead_per_block_s)


def fit_latency(flops: list[float], latency_s: list[float]) -> LatencyFit:
    """Fit the planner's model `latency_s = flops / flops_per_s + overhead_s`."""
    _check(latency_s, flops)
    seconds_per_flop, overhead = _fit_nonnegative([[f, 1.0] for f in flops], latency_s)
    if seconds_per_flop <= 0:
        raise InputError("latency does not grow with FLOPs; cannot fit flops_per_s",
                         field="samples", value=latency_s)
    return LatencyFit(flops_per_s=1.0 / seconds_per_flop, overhead_s=overhead)


def fit_traffic(flops: list[float], weight_bytes: list[float], depth: list[int],
                latency_s: list[float]) -> TrafficFit:
    """Fit the traffic model (see the module docstring)."""
    _check(latency_s, flops, weight_bytes, depth)
    rows = [[f, b, float(d)] for f, b, d in zip(flops, weight_bytes, depth)]
    per_flop, per_byte, per_block = _fit_nonnegative(rows, latency_s)
    if per_flop <= 0:
        raise InputError("latency does not grow with FLOPs; cannot fit flops_per_s",
                         field="samples", value=latency_s)
    return TrafficFit(flops_per_s=1.0 / per_flop,
                      weight_bytes_per_s=1.0 / per_byte if per_byte > 0 else float("inf"),
                      overhead_per_block_s=per_block)


def _check(latency_s: list[float], *features: list[float]) -> None:
    if not latency_s or any(len(f) != len(latency_s) for f in features):
        raise InputError("need one latency per variant, at least one", field="samples",
                         value=len(latency_s))
    if any(t <= 0 for t in latency_s) or any(f <= 0 for f in features[0]):
        raise InputError("FLOPs and latencies must be > 0", field="samples", value=latency_s)


def _fit_nonnegative(rows: list[list[float]], latency_s: list[float]) -> list[float]:
    """Coefficients >= 0 minimising sum((row . coef) / t - 1)^2: best over subsets of terms.

    Subsets have at most as many terms as there are rows (no underdetermined fits); on a tie the
    larger subset, then the one listing earlier terms, wins (one row: the first term alone).
    """
    a = np.array(rows, dtype=float) / np.array(latency_s, dtype=float)[:, None]
    ones = np.ones(len(latency_s))
    scale = np.abs(a).max(axis=0)
    scale[scale == 0] = 1.0
    terms = range(a.shape[1])
    best, best_error = None, float("inf")
    for size in range(min(a.shape[1], len(latency_s)), 0, -1):
        for subset in itertools.combinations(terms, size):
            cols = list(subset)
            coef, *_ = np.linalg.lstsq(a[:, cols] / scale[cols], ones, rcond=None)
            coef = coef / scale[cols]
            if np.any(coef < 0):
                continue
            error = float(np.sum((a[:, cols] @ coef - ones) ** 2))
            if error < best_error - 1e-15:
                full = np.zeros(a.shape[1])
                full[cols] = coef
                best, best_error = full, error
    if best is None:
        raise InputError("no non-negative fit exists", field="samples", value=latency_s)
    return [float(c) for c in best]
