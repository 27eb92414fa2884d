"""Host latency of one ONNX model at batch 1 in onnxruntime (CPU execution provider).

Why: a small model's eager PyTorch forward is mostly per-module Python dispatch, which pruning
does not shrink; an edge deployment runs the exported graph in a runtime with little per-call
overhead, so the pruned sub-models' speed-up is measured there too.

The session is pinned to `threads` intra-op threads and one inter-op thread (recorded in the
result). Like `vit_ops.timing.measure_latency`: warm-up calls, then `repeats` timed blocks of
back-to-back `session.run` calls (each block long enough to swamp timer resolution, timed with
`torch.utils.benchmark`); the result is the median and interquartile range of the per-call time
over the blocks, in seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from planner.errors import InputError
from planner.profile_schema import LatencyStats
from vit_ops.deploy import open_session
from vit_ops.timing import block_timer, latency_stats, timed_blocks


def measure_onnx_latency(path: str | Path, example: np.ndarray, *, threads: int,
                         repeats: int = 7, warmup: int = 5, min_block_s: float = 0.05
                         ) -> LatencyStats:
    """Median and IQR in seconds of one `session.run` on `example` (fed as the graph's input)."""
    if threads <= 0:
        raise InputError("must be > 0", field="threads", value=threads)
    session = open_session(path, threads)
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(example, dtype=np.float32)}
    for _ in range(warmup):
        session.run(None, feed)
    # num_threads only pins torch's pool, which session.run does not use; the session's own
    # thread counts are fixed above.
    timer = block_timer("session.run(None, feed)", {"session": session, "feed": feed}, threads=1)
    return latency_stats(timed_blocks(timer, repeats, min_block_s), threads)
