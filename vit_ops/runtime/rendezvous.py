"""Bringing a fleet together over torch.distributed, with a deadline on every step.

Rank 0 is the aggregator, rank r >= 1 serves the r-th device of the deployment. All ranks meet at a
`TCPStore` (hosted by rank 0, or by torchrun's agent when run under torchrun). A worker first loads
its sub-model, then writes `joined/<rank>` (its `WorkerInfo`) or `failed/<rank>` (why loading
failed) to the store, so the aggregator can name a device that never joins instead of timing out
anonymously. Then every rank joins the gloo default group and one two-rank group per worker,
`{0, r}`: gloo closes every connection of a group when one operation in it times out, so a hung
worker may only take its own link down, and the aggregator keeps serving the others.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

import torch.distributed as dist

from planner.errors import InputError
from vit_ops.runtime.results import DeviceFailure, WorkerInfo

log = logging.getLogger(__name__)

KEY_PREFIX = "edvit/"
POLL_S = 0.02


@dataclass(frozen=True)
class Endpoint:
    """Where rank 0's store listens."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, field: str = "--master") -> "Endpoint":
        """`HOST:PORT` (IPv6 as `[ADDR]:PORT`)."""
        host, sep, port = text.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InputError("expected HOST:PORT", field=field, value=text)
        return cls(host, int(port))


def _under_torchrun() -> bool:
    """torchrun's agent already hosts the store at MASTER_ADDR:MASTER_PORT; every rank is a client."""
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"


def open_store(endpoint: Endpoint, rank: int, world_size: int, timeout_s: float) -> dist.Store:
    """The fleet's key-value store (rank 0 hosts it unless torchrun does); port 0 picks a free port."""
    host_it = rank == 0 and not _under_torchrun()
    store = dist.TCPStore(endpoint.host, endpoint.port, world_size, is_master=host_it,
                          timeout=timedelta(seconds=timeout_s), wait_for_workers=False)
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "")
    return dist.PrefixStore(f"{KEY_PREFIX}{run_id}/{restart}/", store)


def announce_joined(store: dist.Store, info: WorkerInfo) -> None:
    store.set(f"joined/{info.rank}", info.model_dump_json())


def announce_failed(store: dist.Store, rank: int, reason: str) -> None:
    store.set(f"failed/{rank}", reason[:500])


def wait_for_workers(store: dist.Store, devices: list[str], timeout_s: float,
                     exit_status: Callable[[int], str | None] | None = None
                     ) -> tuple[dict[int, WorkerInfo], list[DeviceFailure]]:
    """Wait until every worker rank has joined or failed, or `timeout_s` passed.

    `exit_status(rank)` (local fleets) says how a worker process ended, if it did, so a worker that
    crashed while loading is reported at once. Returns the joined workers and the failures.
    """
    pending = set(range(1, len(devices) + 1))
    joined: dict[int, WorkerInfo] = {}
    failures: list[DeviceFailure] = []
    deadline = time.monotonic() + timeout_s
    while pending:
        for rank in sorted(pending):
            device = devices[rank - 1]
            if store.check([f"joined/{rank}"]):
                joined[rank] = WorkerInfo.model_validate_json(store.get(f"joined/{rank}"))
                pending.discard(rank)
            elif store.check([f"failed/{rank}"]):
                reason = store.get(f"failed/{rank}").decode("utf-8", "replace")
                failures.append(DeviceFailure(device=device, rank=rank,
                                              reason=f"could not start: {reason}"))
                pending.discard(rank)
            elif exit_status is not None and (status := exit_status(rank)) is not None:
                failures.append(DeviceFailure(device=device, rank=rank,
                                              reason=f"process {status} before joining"))
                pending.discard(rank)
        if not pending:
            break
        if time.monotonic() >= deadline:
            for rank in sorted(pending):
                failures.append(DeviceFailure(device=devices[rank - 1], rank=rank,
                                              reason=f"never joined within {timeout_s:g} s"))
            break
        time.sleep(POLL_S)
    return joined, failures


def post_verdict(store: dist.Store, members: list[int] | None, reason: str = "") -> None:
    """Rank 0 tells the workers who serves: `members` (worker ranks, ascending), or None = abort."""
    store.set("verdict", json.dumps({"members": members, "reason": reason}))


def wait_for_verdict(store: dist.Store, rank: int, timeout_s: float) -> tuple[int, int] | None:
    """A worker's (rank, size) in the process group of the members, or None when the run was
    aborted or goes on without it."""
    store.wait(["verdict"], timedelta(seconds=timeout_s))
    verdict = json.loads(store.get("verdict"))
    members = verdict["members"]
    if members is None or rank not in members:
        log.error("rank %d: the aggregator goes on without this worker (%s)", rank,
                  verdict["reason"] or "joined too late")
        return None
    return 1 + members.index(rank), 1 + len(members)


def connect_links(store: dist.Store, rank: int, world_size: int,
                  timeout_s: float) -> dict[int, dist.ProcessGroup]:
    """Join the gloo default group of the members (`rank`/`world_size` are process-group ranks:
    0 = aggregator, i = i-th member), then every `{0, i}` group. Returns the links by group rank
    (a worker gets only its own). Every member calls this with the same world size."""
    dist.init_process_group("gloo", store=dist.PrefixStore("pg/", store), rank=rank,
                            world_size=world_size, timeout=timedelta(seconds=timeout_s))
    links = {}
    for worker in range(1, world_size):
        group = dist.new_group([0, worker], timeout=timedelta(seconds=timeout_s), backend="gloo")
        if rank in (0, worker):
            links[worker] = group
    return links


def close_links() -> None:
    """Tear down the process groups (safe to call when none exists)."""
    if dist.is_initialized():
        dist.destroy_process_group()
