"""Emulated devices on this Linux host: one network namespace, link and cgroup per node.

Topology (every address is in 198.18.0.0/15, the range RFC 2544 reserves for benchmarks, and exists
only inside namespaces this module creates): a hub namespace routes between the leaves; each node
(the aggregator and every device) is a leaf namespace joined to the hub by a veth pair, 198.18.i.1
on the hub side and 198.18.i.2 on the node side, node i = 0 the aggregator. Nothing connects the hub
to the host's own namespace, so no emulated traffic can leave the fleet. Both ends of a veth carry
a `tc tbf` qdisc at the node's link rate (the kernel here has no netem: bandwidth only, no added
delay). Each node's processes run in its own cgroup with a CPU quota (period 10 ms: small quotas
over the default 100 ms period are served in bursts that distort latency) and a memory limit;
cgroup v2 where its cpu and memory controllers are available, else the v1 hierarchies.

Everything made is recorded as an undo step at the moment it is made and undone in reverse on
`close()`: on leaving the `with` block, on SIGTERM/SIGINT/SIGHUP (turned into SystemExit) and at
interpreter exit. Names start with `edvit-` plus a per-run tag, and the names in use are checked
first (`ip netns list`), so a run never touches what it did not create.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from profiler.quota import cgroup_throttled_s

log = logging.getLogger(__name__)

CFS_PERIOD_US = 10_000
SUBNET_PREFIX = "198.18"
NODE_IFNAME = "edvit0"  # the node's side of its veth, the same name in every node namespace
TBF_QUEUE_S = 2.0  # queue depth of each shaper, in seconds at its rate, and at least
TBF_QUEUE_MIN_BYTES = 4 << 20  # what TCP may queue per socket (tcp_limit_output_bytes) x 4
CGROUP_ROOT = Path("/sys/fs/cgroup")
NETNS_DIR = Path("/var/run/netns")  # where `ip netns add` pins the namespaces
_CLONE_NEWNET = 0x40000000
MAX_NODES = 64


class EmulationUnavailable(RuntimeError):
    """This host cannot emulate a fleet (not Linux, not root, no `ip`/`tc`, no cgroup controllers)."""


@dataclass(frozen=True)
class NodeSpec:
    """One emulated node: its link rate (both directions), CPU share of one core and memory."""

    name: str
    link_bits_per_s: float
    cpu_cores: float
    mem_bytes: int = 2 << 30

    def __post_init__(self) -> None:
        if not self.link_bits_per_s > 0:
            raise ValueError(f"{self.name}: link_bits_per_s must be > 0")
        if not 0.01 <= self.cpu_cores <= 64:
            raise ValueError(f"{self.name}: cpu_cores must be in [0.01, 64]")


def unavailable_reason() -> str | None:
    """Why this host cannot emulate a fleet, or None when it can."""
    if not os.uname().sysname == "Linux":
        return "fleet emulation needs Linux"
    if os.geteuid() != 0:
        return "fleet emulation needs root (network namespaces, tc, cgroups)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (apt-get install iproute2)"
    try:
        _CgroupLayout.detect()
    except EmulationUnavailable as exc:
        return str(exc)
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns` does not work here: {probe.stderr.strip()[:200]}"
    return None


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()[:300]}")
    return result


class _Undo:
    """Undo steps in reverse order of creation; each runs once, failures are logged and skipped."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, Callable[[], None]]] = []

    def push(self, what: str, step: Callable[[], None]) -> None:
        self.steps.append((what, step))

    def run_all(self) -> list[str]:
        failed = []
        while self.steps:
            what, step = self.steps.pop()
            try:
                step()
            except Exception as exc:  # cleanup goes on: one stuck resource must not keep the rest
                log.warning("cleanup of %s failed: %s", what, exc)
                failed.append(f"{what}: {exc}")
        return failed


@dataclass(frozen=True)
class _CgroupLayout:
    """Where the cpu and memory controllers live: v2 (one directory) or v1 (one per controller)."""

    version: int
    cpu_parent: Path
    memory_parent: Path

    @classmethod
    def detect(cls) -> "_CgroupLayout":
        own = _own_cgroups()
        v2_root = CGROUP_ROOT if (CGROUP_ROOT / "cgroup.controllers").exists() else None
        if v2_root is not None:
            parent = v2_root / own.get("", "/").lstrip("/")
            controllers = (parent / "cgroup.controllers").read_text().split()
            if {"cpu", "memory"} <= set(controllers):
                return cls(2, parent, parent)
        cpu = CGROUP_ROOT / "cpu"
        memory = CGROUP_ROOT / "memory"
        if (cpu / "cpu.cfs_quota_us").exists() and (memory / "cgroup.procs").exists():
            # under this process's own v1 cgroups, so any limit already set above still holds
            return cls(1, cpu / own.get("cpu", "/").lstrip("/"),
                       memory / own.get("memory", "/").lstrip("/"))
        raise EmulationUnavailable("no cgroup cpu and memory controllers (v2 with cpu+memory "
                                   "in cgroup.controllers, or v1 cpu and memory mounts)")


def _own_cgroups() -> dict[str, str]:
    """controller -> this process's cgroup path ('' = the v2 hierarchy)."""
    paths = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def nice_weight(niceness: int) -> int:
    """The scheduler's weight of a task at `niceness` (1024 at 0, x1.25 per step down).

    A node's cgroup competes with the host's other tasks as one entity of its own weight: the
    niceness of the processes inside it counts only among themselves. So the node's niceness is
    given to its cgroup as its weight (cpu.shares / cpu.weight): at -10 a node gets the CPU its
    quota grants on a host busy with other jobs at niceness 0 (at the default weight, one such
    job halved it: a node at 60 % of a core ran at 33 % on a host at load 9)."""
    return max(2, min(262_144, round(1024 * 1.25 ** -niceness)))


class _Cgroup:
    """A CPU quota (10 ms period) and a memory limit for one node's processes."""

    def __init__(self, layout: _CgroupLayout, name: str, spec: NodeSpec, undo: _Undo,
                 niceness: int = 0) -> None:
        self.dirs = sorted({layout.cpu_parent / name, layout.memory_parent / name})
        for directory in self.dirs:
            if directory.exists():
                raise RuntimeError(f"cgroup {directory} exists already: not ours, left alone")
        if layout.version == 2:
            _enable_v2_controllers(layout.cpu_parent, undo)
        for directory in self.dirs:
            directory.mkdir()
            undo.push(f"cgroup {directory}", lambda d=directory: self._remove(d))
        quota_us = max(1000, round(spec.cpu_cores * CFS_PERIOD_US))
        if layout.version == 2:
            (layout.cpu_parent / name / "cpu.max").write_text(f"{quota_us} {CFS_PERIOD_US}")
            (layout.cpu_parent / name / "cpu.weight").write_text(
                str(min(10_000, max(1, round(nice_weight(niceness) * 100 / 1024)))))
            (layout.cpu_parent / name / "memory.max").write_text(str(spec.mem_bytes))
            (layout.cpu_parent / name / "memory.swap.max").write_text("0") \
                if (layout.cpu_parent / name / "memory.swap.max").exists() else None
        else:
            cpu = layout.cpu_parent / name
            (cpu / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
            (cpu / "cpu.cfs_quota_us").write_text(str(quota_us))
            (cpu / "cpu.shares").write_text(str(nice_weight(niceness)))
            (layout.memory_parent / name / "memory.limit_in_bytes").write_text(str(spec.mem_bytes))
        self.quota_us = quota_us

    def join(self) -> None:
        """Move the calling process into this cgroup (a child calls it before exec: children
        stay in it)."""
        pid = str(os.getpid())
        for directory in self.dirs:
            (directory / "cgroup.procs").write_text(pid)

    def pids(self) -> list[int]:
        found: set[int] = set()
        for directory in self.dirs:
            procs = directory / "cgroup.procs"
            if procs.exists():
                found.update(int(p) for p in procs.read_text().split())
        return sorted(found)

    def throttled_s(self) -> float:
        """CPU time the quota has withheld so far (seconds), from cpu.stat."""
        for directory in self.dirs:
            throttled = cgroup_throttled_s(directory)
            if throttled is not None:
                return throttled
        return 0.0

    def _remove(self, directory: Path) -> None:
        if not directory.exists():
            return
        deadline = time.monotonic() + 5.0
        while True:  # every process in it was started by this fleet (or its children)
            procs = (directory / "cgroup.procs").read_text().split()
            if not procs:
                break
            for pid in procs:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes {procs} in {directory} did not die")
            time.sleep(0.05)
        while True:
            try:
                directory.rmdir()
                return
            except OSError:  # the kernel frees the cgroup a moment after its last process
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def _enable_v2_controllers(parent: Path, undo: _Undo) -> None:
    control = parent / "cgroup.subtree_control"
    enabled = set(control.read_text().split())
    missing = [c for c in ("cpu", "memory") if c not in enabled]
    if missing:
        control.write_text(" ".join(f"+{c}" for c in missing))
        undo.push(f"{control} controllers", lambda: control.write_text(
            " ".join(f"-{c}" for c in missing)))


@dataclass(frozen=True)
class Node:
    """A built node: where its processes run and the address others reach it at."""

    index: int
    spec: NodeSpec
    netns: str
    address: str
    hub_address: str
    cgroup: _Cgroup

    @property
    def name(self) -> str:
        return self.spec.name


class EmulatedFleet:
    """The aggregator's node and one node per device (see the module docstring).

    Use as a context manager; `popen(node, argv)` starts a process inside a node's namespace and
    cgroup, with gloo bound to the node's interface. A real device has its cores to itself; on a
    host shared with other jobs, `niceness` < 0 lets the nodes take what their quotas grant
    (the quotas still cap them, and they add up to less than the host's cores).
    """

    def __init__(self, aggregator: NodeSpec, devices: list[NodeSpec], tag: str | None = None,
                 max_total_cores: float | None = None, niceness: int = 0) -> None:
        specs = [aggregator, *devices]
        if len(specs) > MAX_NODES:
            raise ValueError(f"at most {MAX_NODES} nodes")
        if len({s.name for s in specs}) != len(specs):
            raise ValueError("node names must be distinct")
        cores = sum(s.cpu_cores for s in specs)
        limit = max_total_cores if max_total_cores is not None else float(os.cpu_count() or 1)
        if cores > limit:
            raise ValueError(f"the quotas add up to {cores:.2f} cores, this host has {limit:g}")
        reason = unavailable_reason()
        if reason:
            raise EmulationUnavailable(reason)
        self.specs = specs
        self.niceness = niceness
        self.tag = tag or f"{os.getpid() % 100000}"
        self.prefix = f"edvit-{self.tag}"
        self.hub = f"{self.prefix}-hub"
        self.nodes: list[Node] = []
        self.processes: list[subprocess.Popen] = []
        self._undo = _Undo()
        self._layout = _CgroupLayout.detect()
        self._previous_handlers: dict[int, object] = {}
        self._closed = True

    # -- life cycle ------------------------------------------------------------------------
    def __enter__(self) -> "EmulatedFleet":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        existing = _run(["ip", "netns", "list"]).stdout.split()
        clash = [n for n in existing if n.startswith(self.prefix)]
        if clash:
            raise RuntimeError(f"namespaces {clash} exist already: not this run's, left alone")
        self._closed = False
        atexit.register(self.close)
        self._install_signal_handlers()
        try:
            self._make_namespace(self.hub)
            _run(["ip", "netns", "exec", self.hub, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
            for index, spec in enumerate(self.specs):
                self.nodes.append(self._make_node(index, spec))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop every process started here and remove every namespace, link and cgroup."""
        if self._closed:
            return
        self._closed = True
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log.warning("process %d did not exit", process.pid)
        failed = self._undo.run_all()
        self._restore_signal_handlers()
        atexit.unregister(self.close)
        if failed:
            log.warning("emulated fleet %s: %d cleanup step(s) failed: %s", self.prefix,
                        len(failed), "; ".join(failed))

    def leftovers(self) -> list[str]:
        """Namespaces and cgroups of this run that still exist (empty after close())."""
        names = [n for n in _run(["ip", "netns", "list"]).stdout.split()
                 if n.startswith(self.prefix)]
        for parent in {self._layout.cpu_parent, self._layout.memory_parent}:
            names += [str(p) for p in parent.glob(f"{self.prefix}-*")]
        return names

    def _install_signal_handlers(self) -> None:
        def on_signal(signum, frame):
            raise SystemExit(128 + signum)  # unwinds through every finally, then close()

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            try:
                self._previous_handlers[signum] = signal.signal(signum, on_signal)
            except ValueError:  # not the main thread: atexit and finally still clean up
                break

    def _restore_signal_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            try:
                signal.signal(signum, handler)
            except ValueError:
                pass
        self._previous_handlers.clear()

    # -- building --------------------------------------------------------------------------
    def _make_namespace(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._undo.push(f"netns {name}", lambda: _run(["ip", "netns", "del", name]))
        _run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _make_node(self, index: int, spec: NodeSpec) -> Node:
        netns = f"{self.prefix}-{index}"
        self._make_namespace(netns)
        hub_if = f"edvit-n{index}"
        # created directly inside our two namespaces: the host's namespace never sees either end
        _run(["ip", "-n", self.hub, "link", "add", hub_if, "type", "veth", "peer", "name",
              NODE_IFNAME, "netns", netns])
        hub_address, address = f"{SUBNET_PREFIX}.{index}.1", f"{SUBNET_PREFIX}.{index}.2"
        _run(["ip", "-n", self.hub, "addr", "add", f"{hub_address}/24", "dev", hub_if])
        _run(["ip", "-n", netns, "addr", "add", f"{address}/24", "dev", NODE_IFNAME])
        _run(["ip", "-n", self.hub, "link", "set", hub_if, "up"])
        _run(["ip", "-n", netns, "link", "set", NODE_IFNAME, "up"])
        _run(["ip", "-n", netns, "route", "add", f"{SUBNET_PREFIX}.0.0/16", "via", hub_address])
        for ns, dev in ((self.hub, hub_if), (netns, NODE_IFNAME)):
            _run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
                  *tbf_arguments(spec.link_bits_per_s)])
        cgroup = _Cgroup(self._layout, netns, spec, self._undo, self.niceness)
        return Node(index=index, spec=spec, netns=netns, address=address,
                    hub_address=hub_address, cgroup=cgroup)

    # -- running ---------------------------------------------------------------------------
    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    @property
    def aggregator(self) -> Node:
        return self.nodes[0]

    def popen(self, node: Node | str, argv: list[str], env: dict[str, str] | None = None,
              netns: str | None = None, limited: bool = True, **kwargs) -> subprocess.Popen:
        """Start `argv` in `node`'s namespace (or `netns`) and cgroup (`limited` False: outside
        every node's cgroup, e.g. a peer in the hub); stopped by close()."""
        node = self.node(node) if isinstance(node, str) else node
        environment = {**os.environ, "GLOO_SOCKET_IFNAME": NODE_IFNAME, "OMP_NUM_THREADS": "1",
                       **(env or {})}
        target = NETNS_DIR / (netns or node.netns)

        def enter() -> None:  # in the child, before exec
            if limited:
                node.cgroup.join()
            _enter_netns(target)
            if self.niceness:
                os.setpriority(os.PRIO_PROCESS, 0, self.niceness)

        process = subprocess.Popen(argv, env=environment, preexec_fn=enter, **kwargs)
        self.processes.append(process)
        return process

    def run(self, node: Node | str, argv: list[str], timeout_s: float,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run `argv` to completion inside `node`; its output is captured."""
        process = self.popen(node, argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        try:
            out, err = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            raise RuntimeError(f"{' '.join(argv[:6])} ... in {node}: no result within "
                               f"{timeout_s:g} s; stderr: {err.strip()[-500:]}") from None
        return subprocess.CompletedProcess(argv, process.returncode, out, err)


def _enter_netns(path: Path) -> None:
    """setns(2) into a named network namespace. (`ip netns exec` would also remount /sys, hiding
    the cgroup hierarchy from the process, so `edvit calibrate` could not read its memory limit.)"""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


def tbf_arguments(bits_per_s: float) -> list[str]:
    """`tc qdisc ... tbf` arguments for a link of `bits_per_s`: a burst of two frames (the bucket
    fills while the link idles between requests and lets that much of the next input through at
    line rate, which a link of this bandwidth does not: with 8 frames, 12 KB, a 37 KB input
    reached a 2 Mbit/s device in 112 ms, not the 157 ms its bytes take) and a deep queue, so
    TCP's bursts queue instead of being dropped (with no delay on the link, a drop costs a
    200 ms retransmission timeout: a 0.5 s queue at 2 Mbit/s put 2.4x the median into the p95)."""
    rate_bytes = bits_per_s / 8
    burst = max(2 * 1514, int(rate_bytes * 0.0005))
    limit = max(TBF_QUEUE_MIN_BYTES, int(rate_bytes * TBF_QUEUE_S)) + burst
    return ["rate", f"{int(bits_per_s)}bit", "burst", str(burst), "limit", str(limit)]
