"""Host latency of one call at batch 1: the one timing method of edvit (profiler and runtime).

Times `fn(example)` with `torch.utils.benchmark` in fixed blocks: the intra-op thread count is
pinned for the whole measurement (warm-up included) and restored afterwards; each repeat times a
block of back-to-back calls long enough to swamp timer resolution, and the result is the median
and interquartile range over the repeats, in seconds. The profiler's latencies, `edvit
calibrate`, `edvit evaluate` and the runtime's `serve --calibrate` all come from here, so a plan
made from calibrated figures is compared with a measurement of the same kind. It lives in
`vit_ops` because the runtime (part of `vit_ops`, which never imports `profiler`) times too.

Clock: "wall" (default) is elapsed time, what a user waits. "cpu" is the calling thread's CPU time,
valid with one thread only (PyTorch then computes in the calling thread): on a machine shared with
other jobs it measures what the inference costs without the time spent descheduled, i.e. the
latency the same machine would show unloaded. Calibration on a busy host uses it.
"""

from __future__ import annotations

import logging
import math
import random
import statistics
import time
from typing import Any, Callable, Literal

import torch

from planner.errors import InputError
from planner.profile_schema import LatencyStats

log = logging.getLogger(__name__)

Clock = Literal["wall", "cpu"]


def default_threads() -> int:
    """Intra-op threads used when none are asked for: torch's current setting."""
    return torch.get_num_threads()


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


def block_timer(stmt: str, globals: dict[str, Any], threads: int, clock: Clock = "wall"):
    """A `torch.utils.benchmark.Timer` of `stmt` with `threads` pinned while it runs."""
    # Imported here: torch.utils.benchmark pulls in cpp_extension, which logs a CUDA notice on
    # CPU-only hosts; commands that do not time anything should not print it.
    import torch.utils.benchmark as benchmark

    return benchmark.Timer(stmt=stmt, globals=globals, num_threads=threads,
                           timer=time.thread_time if clock == "cpu" else time.perf_counter)


def measure_latency(fn: Callable[[torch.Tensor], Any], example: torch.Tensor, *,
                    threads: int | None = None, repeats: int = 7, warmup: int = 2,
                    min_block_s: float = 0.05, clock: Clock = "wall") -> LatencyStats:
    """Median and IQR of `fn(example)` time in seconds over `repeats` timed blocks; `fn` is a
    module (put in eval mode) or any callable, e.g. an onnxruntime extractor."""
    threads = threads or default_threads()
    if clock not in ("wall", "cpu"):
        raise InputError("clock must be 'wall' or 'cpu'", field="clock", value=clock)
    if clock == "cpu" and threads != 1:
        raise InputError("the cpu clock needs threads=1 (it times the calling thread)",
                         field="threads", value=threads)
    if isinstance(fn, torch.nn.Module):
        fn.eval()
    timer = block_timer("fn(x)", {"fn": fn, "x": example}, threads, clock)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            for _ in range(warmup):
                fn(example)
            times = timed_blocks(timer, repeats, min_block_s)
    finally:
        torch.set_num_threads(previous)
    return latency_stats(times, threads)


@torch.no_grad()
def measure_after_idle(model: torch.nn.Module, example: torch.Tensor, *,
                       threads: int | None = None, calls: int = 5, idle_s: float = 0.03,
                       warmup: int = 2, clock: Clock = "wall") -> LatencyStats:
    """Median and IQR of single calls of `model(example)`, each after `idle_s` of sleep.

    This is the latency of one request to an otherwise idle device, the way a fleet's worker
    runs. Back-to-back blocks measure throughput instead, and the two differ on a device under a
    CPU quota: a call shorter than the quota left in the scheduler's period runs at full speed
    (in an emulated fleet at 40 % of a core, a 5 ms sub-model took 10 ms, not 12.5 ms).
    """
    pairs = calls_after_idle(model, example, threads=threads, calls=calls, idle_s=idle_s,
                             warmup=warmup)
    times = [cpu if clock == "cpu" else wall for wall, cpu in pairs]
    return latency_stats(times, threads or default_threads())


def calls_after_idle(model: torch.nn.Module, example: torch.Tensor, *,
                     threads: int | None = None, calls: int = 5, idle_s: float = 0.03,
                     jitter_s: float = 0.0, warmup: int = 2,
                     rng: random.Random | None = None) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of single calls of `model(example)`, each after `idle_s` of sleep
    plus a random fraction of `jitter_s` (under a CPU quota: its period, so calls start at
    random phases of it, as requests do, not locked to where the last call ended). The CPU
    time is the calling thread's, all of the call's with one thread."""
    rng = rng or random.Random(0)
    threads = threads or default_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    model.eval()
    try:
        with torch.no_grad():
            for _ in range(warmup):
                model(example)
            return timed_after_idle(lambda: model(example), calls=calls, idle_s=idle_s,
                                    jitter_s=jitter_s, rng=rng)
    finally:
        torch.set_num_threads(previous)


def timed_after_idle(call, *, calls: int, idle_s: float, jitter_s: float,
                     rng: random.Random) -> list[tuple[float, float]]:
    """(wall, calling thread's CPU) seconds of `calls` calls of `call()`, each after `idle_s`
    of sleep plus a random fraction of `jitter_s`."""
    pairs = []
    for _ in range(calls):
        time.sleep(idle_s + rng.random() * jitter_s)
        start, cpu_start = time.perf_counter(), time.thread_time()
        call()
        pairs.append((time.perf_counter() - start, time.thread_time() - cpu_start))
    return pairs


def timed_blocks(timer, repeats: int, min_block_s: float) -> list[float]:
    """Seconds per call of a `torch.utils.benchmark.Timer`'s statement over `repeats` blocks of
    back-to-back calls, each block long enough (>= `min_block_s`) to swamp the timer's resolution."""
    first = timer.timeit(1).median
    number = max(1, math.ceil(min_block_s / max(first, 1e-9)))
    return [timer.timeit(number).median for _ in range(repeats)]


def nearest_rank_percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile q (0..1) of an ascending, non-empty list: a value that occurred."""
    index = min(len(sorted_values) - 1, max(0, int(round(q * len(sorted_values) + 0.5)) - 1))
    return sorted_values[index]


def latency_stats(times: list[float], threads: int) -> LatencyStats:
    """Median and interquartile range of repeated timings (seconds)."""
    quartiles = statistics.quantiles(times, n=4, method="inclusive")
    return LatencyStats(median_s=statistics.median(times), iqr_s=quartiles[2] - quartiles[0],
                        repeats=len(times), threads=threads)
