"""One worker's link to the aggregator: a two-rank gloo process group of its own, made per join.

torch.distributed cannot add a rank to a process group once made, so a fleet built as one group
loses a device for good when its process dies, and one device dying while the group forms stops
every other device from joining. Here each worker has its own group, `{aggregator, worker}`, built
directly (`ProcessGroupGloo`) from the fleet's store under a key prefix of its own,
`link/<rank>/<generation>/`: a restarted worker takes the next generation and builds a fresh group,
while the links of the other devices never notice. Gloo's transport (TCP, the same one the
fleet used before) and point-to-point sends stay as they were; a broken or timed-out link is
dropped, never reused (gloo closes a pair after a timeout).

Why not plain sockets: gloo already frames tensors, runs sends and receives asynchronously off the
GIL and reports a dead peer at once ("Connection reset by peer"), and its store handshake is the
one the fleet joins through; only the "one group for all" part had to go.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

AGGREGATOR, WORKER = 0, 1
TAG = 0


class Link:
    """A two-rank gloo group between the aggregator and worker `rank` (generation `generation`)."""

    def __init__(self, store: dist.Store, rank: int, generation: int, side: int,
                 timeout_s: float) -> None:
        self.rank, self.generation, self.side = rank, generation, side
        self.peer = WORKER if side == AGGREGATOR else AGGREGATOR
        prefix = dist.PrefixStore(f"link/{rank}/{generation}/", store)
        # blocks until both sides are there, at most timeout_s
        self.group = dist.ProcessGroupGloo(prefix, side, 2, _options(timeout_s))

    def isend(self, tensor: torch.Tensor, tag: int = TAG):
        return self.group.send([tensor], self.peer, tag)

    def irecv(self, tensor: torch.Tensor, tag: int = TAG):
        return self.group.recv([tensor], self.peer, tag)

    def send(self, tensor: torch.Tensor, timeout_s: float) -> None:
        self.isend(tensor).wait(timedelta(seconds=timeout_s))

    def recv(self, tensor: torch.Tensor, timeout_s: float) -> None:
        self.irecv(tensor).wait(timedelta(seconds=timeout_s))


def _options(timeout_s: float) -> dist.ProcessGroupGloo._Options:
    """Gloo's options: the timeout, and the interface GLOO_SOCKET_IFNAME names, as
    `init_process_group` would honour it (a group built directly does not read it, and binds to
    what the host name resolves to: 127.0.1.1 on Raspberry Pi OS and Debian, unreachable from
    other hosts; in an emulated fleet, an address outside the node's namespace)."""
    options = dist.ProcessGroupGloo._Options()
    options._timeout = timedelta(seconds=timeout_s)
    interface = os.environ.get("GLOO_SOCKET_IFNAME", "").split(",")[0]
    options._devices = [dist.ProcessGroupGloo.create_device(interface=interface) if interface
                        else dist.ProcessGroupGloo.create_default_device()]
    return options
