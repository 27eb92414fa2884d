"""Transport floor of the runtime: gloo point-to-point between two local processes on loopback.

What a request of `edvit serve --local` costs before any model runs, measured the way the runtime
talks (one two-rank gloo group, float32 tensors):

- round trip: rank 0 sends a message of the image's size, rank 1 answers with one of the
  features' size (the digits deployment: a 1x16x16 image, 32 floats + the compute time), for
  three ways of posting and waiting: blocking `send`/`recv`; `isend`/`irecv` + `wait(timeout)`
  (what the aggregator does, so every wait has a deadline); both with the receive posted before
  the send (the aggregator posts a worker's receive right after its send);
- idle CPU: the share of one core a process uses while it waits in a receive that takes 1 s to
  arrive (a process that busy-waits there uses ~1.0 and steals a core from the workers that
  compute).

Medians over repeats (spread = max - min), one intra-op thread per process.

    python benchmarks/runtime_transport_bench.py [--iters 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import time
from datetime import timedelta

IMAGE_FLOATS = 1 * 16 * 16
FEATURE_FLOATS = 32 + 1
IDLE_WAIT_S = 1.0
TIMEOUT = timedelta(seconds=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peer(rank: int, port: int, iters: int, results) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, 2, is_master=rank == 0, timeout=TIMEOUT)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2, timeout=TIMEOUT)
    group = dist.new_group([0, 1], backend="gloo", timeout=TIMEOUT)
    image = torch.randn(IMAGE_FLOATS)
    feature = torch.randn(FEATURE_FLOATS)
    for mode in ("blocking", "async+wait(timeout)", "async, recv posted first"):
        dist.barrier(group=group)
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            if rank == 0:
                _round_trip(dist, group, mode, image, torch.empty(FEATURE_FLOATS))
            else:
                _answer(dist, group, mode, torch.empty(IMAGE_FLOATS), feature)
            times.append(time.perf_counter() - start)
        if rank == 0:
            results[mode] = statistics.median(times[iters // 10:])
    # idle CPU while waiting in a receive that arrives after IDLE_WAIT_S
    dist.barrier(group=group)
    for mode in ("recv (blocking)", "irecv + wait(timeout)"):
        if rank == 0:
            time.sleep(IDLE_WAIT_S)
            dist.send(image, dst=1, group=group)
        else:
            cpu0, wall0 = time.process_time(), time.perf_counter()
            if mode.startswith("recv"):
                dist.recv(torch.empty(IMAGE_FLOATS), src=0, group=group)
            else:
                dist.irecv(torch.empty(IMAGE_FLOATS), src=0, group=group).wait(timeout=TIMEOUT)
            results[f"idle cpu: {mode}"] = ((time.process_time() - cpu0)
                                            / (time.perf_counter() - wall0))
        dist.barrier(group=group)
    dist.destroy_process_group()


def _round_trip(dist, group, mode, image, reply) -> None:
    if mode == "blocking":
        dist.send(image, dst=1, group=group)
        dist.recv(reply, src=1, group=group)
    elif mode == "async+wait(timeout)":
        send = dist.isend(image, dst=1, group=group)
        send.wait(timeout=TIMEOUT)
        dist.irecv(reply, src=1, group=group).wait(timeout=TIMEOUT)
    else:
        send = dist.isend(image, dst=1, group=group)
        recv = dist.irecv(reply, src=1, group=group)
        send.wait(timeout=TIMEOUT)
        recv.wait(timeout=TIMEOUT)


def _answer(dist, group, mode, image, feature) -> None:
    if mode == "blocking":
        dist.recv(image, src=0, group=group)
        dist.send(feature, dst=0, group=group)
    else:
        dist.irecv(image, src=0, group=group).wait(timeout=TIMEOUT)
        dist.isend(feature, dst=0, group=group).wait(timeout=TIMEOUT)


def measure(iters: int) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")
    port = _free_port()
    with context.Manager() as manager:
        results = manager.dict()
        peers = [context.Process(target=_peer, args=(r, port, iters, results)) for r in (0, 1)]
        for p in peers:
            p.start()
        for p in peers:
            p.join(120)
            if p.exitcode != 0:
                raise RuntimeError(f"peer ended with {p.exitcode}")
        return dict(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    runs = [measure(args.iters) for _ in range(args.repeats)]
    print(f"gloo on loopback, 2 processes, 1 thread each; host cores {os.cpu_count()}; "
          f"image {IMAGE_FLOATS} floats, features {FEATURE_FLOATS} floats; "
          f"{args.iters} round trips x {args.repeats} repeats")
    print(f"{'measure':<36} {'median':>10} {'spread':>10}")
    for key in runs[0]:
        values = [r[key] for r in runs]
        med, spread = statistics.median(values), max(values) - min(values)
        if key.startswith("idle cpu"):
            print(f"{key:<36} {med:>9.2f}c {spread:>9.2f}c")
        else:
            print(f"{'round trip: ' + key:<36} {med * 1e6:>8.1f}us {spread * 1e6:>8.1f}us")


if __name__ == "__main__":
    main()
