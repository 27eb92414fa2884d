"""Thread pinning and the one timing helper of the runtime (torch.utils.benchmark, threads recorded)."""

from __future__ import annotations

import logging
from typing import Callable

import torch

log = logging.getLogger(__name__)

CALIBRATION_MIN_RUN_S = 0.3


def pin_threads(threads: int, interop: bool = True) -> tuple[int, int]:
    """Set torch's intra-op threads (and, in a process of its own, inter-op threads to 1 where still
    possible); returns both as they are now."""
    torch.set_num_threads(threads)
    if not interop:
        return torch.get_num_threads(), torch.get_num_interop_threads()
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # inter-op pool already started in this process: leave it
        log.debug("inter-op threads already fixed at %d", torch.get_num_interop_threads())
    return torch.get_num_threads(), torch.get_num_interop_threads()


@torch.no_grad()
def median_latency_s(fn: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor,
                     threads: int, min_run_time_s: float = CALIBRATION_MIN_RUN_S) -> float:
    """Median seconds of `fn(example)` with `threads` pinned, after torch.utils.benchmark's warm-up."""
    import torch.utils.benchmark as benchmark  # imported here: it logs a CUDA warning on import

    timer = benchmark.Timer(stmt="fn(x)", globals={"fn": fn, "x": example}, num_threads=threads)
    return float(timer.blocked_autorange(min_run_time=min_run_time_s).median)
