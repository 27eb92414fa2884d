"""Bringing a fleet together over torch.distributed, with a deadline on every step.

Rank 0 is the aggregator, rank r >= 1 serves the r-th device of the deployment. All ranks meet at a
`TCPStore` (hosted by rank 0, or by torchrun's agent when run under torchrun). A worker first loads
its sub-model, then writes `joined/<rank>/<generation>` (its `WorkerInfo`) or
`failed/<rank>/<generation>` (why loading failed) to the store, so the aggregator can name a device
that never joins instead of timing out anonymously. Each announcement has a generation (a counter
per rank in the store): a restarted worker announces the next one, and the aggregator, which
watches the counters for as long as it runs, accepts it and builds a fresh link with it
(`vit_ops.runtime.link`). No step waits for all workers at once, so a device that dies while the
fleet joins delays nobody else.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist

from planner.errors import InputError
from planner.limits import ascii_count
from vit_ops.runtime.results import WorkerInfo

log = logging.getLogger(__name__)

KEY_PREFIX = "edvit/"
POLL_S = 0.02


@dataclass(frozen=True)
class Endpoint:
    """Where rank 0's store listens."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, field: str = "--master", any_port: bool = False) -> "Endpoint":
        """`HOST:PORT` (IPv6 as `[ADDR]:PORT`), PORT 1..65535 in ASCII digits (0 too with
        `any_port`: the system picks one)."""
        host, sep, port_text = text.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise InputError("expected HOST:PORT (an IPv6 address as [ADDR]:PORT)", field=field,
                             value=text)
        port = ascii_count(port_text, 5)
        # an IP address or a host name in ASCII (IDNA): '١٢٧.0.0.1' is neither, and resolving it
        # retried for minutes
        bad_host = not host or not host.isascii() or any(c.isspace() or c in "[]/\\\x00"
                                                          for c in host)
        if not sep or bad_host or port is None or not (0 if any_port else 1) <= port <= 65535:
            raise InputError("expected HOST:PORT", field=field, value=text)
        return cls(host, port)


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


def announce_joined(store: dist.Store, info: WorkerInfo) -> int:
    """A worker that loaded its model asks to join; returns its generation (1, 2, ... per rank:
    a restarted worker takes the next one, and its link is built under that generation)."""
    generation = store.add(f"generation/{info.rank}", 1)
    store.set(f"joined/{info.rank}/{generation}", info.model_dump_json())
    return generation


def announce_failed(store: dist.Store, rank: int, reason: str) -> None:
    generation = store.add(f"generation/{rank}", 1)
    store.set(f"failed/{rank}/{generation}", reason[:500])


def latest_generation(store: dist.Store, rank: int) -> int:
    """The newest generation worker `rank` announced (0: none yet)."""
    return store.add(f"generation/{rank}", 0)


def read_announcement(store: dist.Store, rank: int, generation: int
                      ) -> WorkerInfo | str | None:
    """What generation `generation` of worker `rank` said: its WorkerInfo (joined), the reason it
    could not start (str), or None while it has not written it yet."""
    if store.check([f"joined/{rank}/{generation}"]):
        return WorkerInfo.model_validate_json(store.get(f"joined/{rank}/{generation}"))
    if store.check([f"failed/{rank}/{generation}"]):
        return store.get(f"failed/{rank}/{generation}").decode("utf-8", "replace")
    return None


def accept(store: dist.Store, rank: int, generation: int) -> None:
    """The aggregator takes generation `generation` of worker `rank`: both sides build the link."""
    store.set(f"accept/{rank}/{generation}", "1")


def close_fleet(store: dist.Store, reason: str) -> None:
    """The aggregator is done (or aborted): workers still waiting to be accepted leave."""
    store.set("closed", json.dumps({"reason": reason}))


def wait_for_accept(store: dist.Store, rank: int, generation: int, timeout_s: float) -> bool:
    """Whether the aggregator accepted this worker within `timeout_s` (False when it closed the
    fleet or never answered)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if store.check([f"accept/{rank}/{generation}"]):
            return True
        if store.check(["closed"]):
            reason = json.loads(store.get("closed"))["reason"]
            log.error("rank %d: the aggregator closed the fleet (%s)", rank, reason or "done")
            return False
        time.sleep(POLL_S)
    log.error("rank %d: the aggregator did not accept this worker within %g s", rank, timeout_s)
    return False
