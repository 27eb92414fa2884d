"""The aggregator's fleet: who is joined, one request over every live device, rejoins, bye.

`Fleet` watches the store for as long as it runs (a thread): every worker announcement of a new
generation (`rendezvous`) is accepted and gets a fresh `Link`, built in a thread of its own, so a
device that is slow or dies while joining holds up nobody, and a restarted worker rejoins a
running fleet. `infer` sends one batch of 8-bit images to every live device (every receive posted
before the first send; at once, or one device after another in the plan's send order), waits for
each answer until the request's deadline, and fuses the features; a device whose link breaks
(process died) or that misses the deadline (hung) is dropped at once, named as a
`DeviceFailure`, and `on_lost(rank)` tells the launcher. A device that does not acknowledge its
input in its share of the time left holds up no later send: its receipt is waited for on a
helper thread while the next device is sent its input.

Failover: a slot whose sub-model has a standby copy (`FeatureSlot.standby`) is asked of the device
holding the copy while its own device is away, in the same request as that device's own work; a
device that fails during a request has its slots asked of their standby devices once more, until
the request's failover deadline. Such an answer is complete and says which devices served whose
slots (`FleetAnswer.standby`). A slot nobody serves stays zero, its bit of the presence mask 0 for
a head that takes one (`vit_ops.fusion.MaskedFusionHead`, what `edvit evaluate --without` feeds
it); the answer lists every device it lacks, and the caller decides whether such an answer may be
served (degraded mode) or not. When the device rejoins, its slots are its own again: routes are
made per request from who is serving then.

`infer`, `ping`, `calibrate` and `close` are called from one thread (the caller's); the watcher
only adds links, and a receipt's helper thread only drops its own device's link, under the lock.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from vit_ops.runtime import protocol
from vit_ops.runtime.link import AGGREGATOR, Link
from vit_ops.runtime.rendezvous import (POLL_S, accept, close_fleet, latest_generation,
                                        read_announcement)
from planner.errors import InputError
from vit_ops.runtime.results import (DeviceFailure, DeviceTrace, RequestTrace, RuntimeConfig,
                                     WorkerInfo, first_line)
from vit_ops.runtime.source import (
    DeploymentSource,
    SendOrders,
    device_columns,
    device_slots,
    devices_of,
    feature_width,
)

log = logging.getLogger(__name__)

# Once every device serves, the watcher reads the store this often. At POLL_S (50 Hz) the reads
# took 2.5 % of a core for four devices, and on a node under a CPU quota such wake-ups beside the
# aggregator's own worker slowed its sub-model by a third (ViT-S r=0.75 at 112 px, 30 % of a
# core: 52.5 -> 70.8 ms).
WATCH_S = 0.5

ExitStatus = Callable[[int], "str | None"]
EXIT_STATUS_GRACE_S = 1.0
NOT_JOINED = "not joined yet"


@dataclass
class _Device:
    """The aggregator's view of one device's worker."""

    name: str
    rank: int  # the worker's rank in the fleet (device order)
    columns: torch.Tensor  # fusion-input columns its features fill
    slots: list[int]  # its slots: the presence-mask columns its answer sets
    link: Link | None = None
    seen_generation: int = 0
    info: WorkerInfo | None = None
    problem: str | None = NOT_JOINED  # why it is not serving; None while it is
    final: bool = False  # failed for good in this fleet's eyes until it announces again
    abandoned: list = field(default_factory=list)  # dead links and works, kept referenced

    @property
    def width(self) -> int:
        return len(self.columns)


@dataclass(eq=False)
class _Ask:
    """What one device is asked in one exchange: its own sub-models (`primaries`) and the
    standby copies of these slots; `width` is the features it answers per image."""

    device: _Device
    link: Link
    primaries: bool
    standby: tuple[int, ...]
    width: int

    def messages(self, op: int, pixels: torch.Tensor | None, n: int) -> list[torch.Tensor]:
        return protocol.control(op, n, self.primaries, self.standby) + ([pixels] if n else [])


class _Collected:
    """One request's fusion input as the replies come in, and who served which slot."""

    def __init__(self, n: int, total_width: int, num_slots: int) -> None:
        self.n = n
        self.features = torch.zeros(n, total_width)
        self.mask = torch.zeros(n, num_slots)
        self.served: set[int] = set()
        self.standby: dict[str, set[str]] = {}  # failed device -> devices serving its slots
        self.device_s: dict[str, float] = {}
        self.traces: dict[str, DeviceTrace] = {}

    def put(self, values: torch.Tensor, columns: torch.Tensor, slots: list[int]) -> None:
        self.features[:, columns] = values
        self.mask[:, slots] = 1.0
        self.served.update(slots)


@dataclass
class FleetAnswer:
    """One request's outcome: logits of every image, the devices not serving, and how their
    slots were served (standby copies) or not."""

    logits: torch.Tensor  # (n, classes)
    missing: list[DeviceFailure]  # devices that did not serve this request
    device_s: dict[str, float]  # device -> its compute seconds for this request
    fusion_s: float
    elapsed_s: float
    trace: RequestTrace | None = None  # where the time went, per device
    standby: dict[str, list[str]] = field(default_factory=dict)  # failed device -> the devices
    # whose standby copies served its slots in this answer
    lacking: list[DeviceFailure] = field(default_factory=list)  # devices whose slots are zeros
    unserved_slots: list[int] = field(default_factory=list)

    @property
    def degraded(self) -> bool:
        """Made without some sub-model's features."""
        return bool(self.unserved_slots)

    @property
    def failover(self) -> bool:
        """Some failed device's slots were served by their standby copies."""
        return bool(self.standby)


class Fleet:
    """The workers of a deployment as the aggregator sees them (see the module docstring)."""

    def __init__(self, source: DeploymentSource, store: dist.Store, config: RuntimeConfig,
                 exit_status: ExitStatus | None = None,
                 on_lost: Callable[[int], None] | None = None) -> None:
        self.store, self.config = store, config
        self.exit_status, self.on_lost = exit_status, on_lost
        slots = source.slots()
        columns, slot_indices = device_columns(slots), device_slots(slots)
        none = torch.zeros(0, dtype=torch.int64)  # a device holding only standby copies
        self.devices = [_Device(name=d, rank=r, columns=columns.get(d, none),
                                slots=slot_indices.get(d, []))
                        for r, d in enumerate(devices_of(source), start=1)]
        self.slot_device = [slot.device for slot in slots]
        self.slot_standby = [slot.standby for slot in slots]
        self.slot_widths = [slot.width for slot in slots]
        self.slot_columns = list(torch.split(torch.arange(feature_width(slots)),
                                             self.slot_widths))
        self.total_width = feature_width(slots)
        self.send_orders = _send_orders(source, config.input_order)
        unknown = [d for d in self.send_orders.normal if d not in devices_of(source)]
        if unknown:
            raise InputError("not a device of the fleet", field="input_order", value=unknown[0])
        self.num_slots = len(slots)
        self.fusion = source.load_fusion().eval()
        self.takes_mask = bool(getattr(self.fusion, "takes_mask", False))
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.failures: list[DeviceFailure] = []  # every failure seen, in order
        self._closed = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="edvit-fleet-watch", daemon=True)
        # waits for the receipts of input sent in order, so that the next send need not
        self._receipts = ThreadPoolExecutor(max(len(self.devices), 1),
                                            thread_name_prefix="edvit-receipt")

    # ------------------------------------------------------------------ membership

    def start(self) -> "Fleet":
        self._watcher.start()
        return self

    def _watch(self) -> None:
        """Read the store for joins and exits: every POLL_S while a device may still join, every
        WATCH_S once each device serves or has given up (a link that breaks drops its device at
        once, without the watcher)."""
        while not self._closed.is_set():
            for device in self.devices:
                try:
                    self._check_announcements(device)
                except (RuntimeError, dist.DistError) as exc:  # the store is closing
                    if not self._closed.is_set():
                        log.warning("fleet watcher: %s", exc)
            with self.lock:
                waiting = any(d.link is None and not d.final for d in self.devices)
            self._closed.wait(POLL_S if waiting else WATCH_S)

    def _check_announcements(self, device: _Device) -> None:
        newest = latest_generation(self.store, device.rank)
        if newest > device.seen_generation:
            said = read_announcement(self.store, device.rank, newest)
            if said is None:
                return  # the counter moved, the message is on its way
            device.seen_generation = newest
            if isinstance(said, str):
                self._set_problem(device, f"could not start: {said}", final=True)
            else:
                threading.Thread(target=self._connect, args=(device, newest, said), daemon=True,
                                 name=f"edvit-link-{device.rank}").start()
        elif device.link is None and not device.final and self.exit_status is not None:
            status = self.exit_status(device.rank)
            if status is not None:
                self._set_problem(device, f"process {status} before joining", final=True)

    def _connect(self, device: _Device, generation: int, info: WorkerInfo) -> None:
        accept(self.store, device.rank, generation)
        try:
            link = Link(self.store, device.rank, generation, AGGREGATOR, self.config.join_limit_s)
        except (RuntimeError, dist.DistError) as exc:
            if generation == device.seen_generation:
                self._set_problem(device, f"could not connect: {first_line(exc)}", final=True)
            return
        with self.changed:
            if generation != device.seen_generation or self._closed.is_set():
                device.abandoned.append(link)  # a newer worker already announced itself
                return
            if device.link is not None:
                device.abandoned.append(device.link)
            device.link, device.info, device.problem, device.final = link, info, None, False
            self.changed.notify_all()
        log.info("device %s (rank %d) joined, generation %d", device.name, device.rank,
                 generation)

    def _set_problem(self, device: _Device, problem: str, final: bool) -> None:
        with self.changed:
            device.problem, device.final = problem, final
            self.failures.append(DeviceFailure(device=device.name, rank=device.rank,
                                               reason=problem))
            self.changed.notify_all()

    def wait_joined(self, limit_s: float) -> list[DeviceFailure]:
        """Wait until every device has joined or failed for good, at most `limit_s`; returns a
        failure for every device not joined then."""
        deadline = time.monotonic() + limit_s
        with self.changed:
            while any(d.link is None and not d.final for d in self.devices):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.changed.wait(min(remaining, 0.1))
            return [DeviceFailure(device=d.name, rank=d.rank,
                                  reason=d.problem if d.final else f"never joined within "
                                                                   f"{limit_s:g} s")
                    for d in self.devices if d.link is None]

    def readiness(self) -> dict[str, str | None]:
        """device -> why it is not serving now (None: it is)."""
        with self.lock:
            return {d.name: d.problem for d in self.devices}

    def workers(self) -> list[WorkerInfo]:
        """What the joined workers reported, in rank order."""
        with self.lock:
            return [d.info for d in self.devices if d.link is not None and d.info is not None]

    def missing(self) -> list[DeviceFailure]:
        """A failure for each device not serving now."""
        with self.lock:
            return [DeviceFailure(device=d.name, rank=d.rank, reason=d.problem or "")
                    for d in self.devices if d.link is None]

    def _failures(self, names: set[str]) -> list[DeviceFailure]:
        with self.lock:
            return [DeviceFailure(device=d.name, rank=d.rank,
                                  reason=d.problem or "did not answer in time")
                    for d in self.devices if d.name in names]

    def uncovered(self) -> list[DeviceFailure]:
        """A failure for each device not serving now whose slots are not all served by live
        standby copies instead (answers made now would lack them)."""
        with self.lock:
            live = {d.name for d in self.devices if d.link is not None}
            return [DeviceFailure(device=d.name, rank=d.rank, reason=d.problem or "")
                    for d in self.devices if d.link is None
                    and any(self.slot_standby[s] not in live for s in d.slots)]

    def starting(self) -> list[str]:
        """Devices that have not joined yet since the fleet started."""
        with self.lock:
            return [d.name for d in self.devices if d.problem == NOT_JOINED]

    def coverage(self) -> dict[str, list[str]]:
        """failed device -> the live devices whose standby copies serve its slots now (devices
        not serving, with slots, each of which a live standby copy serves)."""
        with self.lock:
            live = {d.name for d in self.devices if d.link is not None}
            return {d.name: sorted({self.slot_standby[s] for s in d.slots})
                    for d in self.devices if d.link is None and d.slots
                    and all(self.slot_standby[s] in live for s in d.slots)}

    # ------------------------------------------------------------------ requests

    @torch.no_grad()
    def infer(self, pixels: torch.Tensor, deadline: float,
              failover_deadline: float | None = None) -> FleetAnswer:
        """Fused logits of uint8 images (n, C, H, W), the live devices sent them in the send
        order for the devices down (`send_orders`), a failed device's slots asked of the devices
        holding their standby copies; `deadline` is a `time.monotonic()` instant. Slots whose
        device fails during the request are asked of their standby devices once more, until
        `failover_deadline` (None: `deadline`)."""
        started = time.perf_counter()
        n = int(pixels.shape[0])
        wire = protocol.to_wire(pixels)
        collected = _Collected(n, self.total_width, self.num_slots)
        live = self._live()
        absent = {d.name for d in self.devices} - {d.name for d, _ in live}
        down = [s for s in range(self.num_slots) if self.slot_device[s] in absent]
        routes = self._routes(live, down)
        asks = [self._ask(d, link, True, routes.get(d.name, ()))
                for d, link in live if d.width or d.name in routes]
        replies, sent = self._exchange(asks, wire, n, deadline, self.send_orders.order(absent))
        self._collect(collected, replies, sent, started)
        absent |= {a.device.name for a in asks} - {a.device.name for a, _, _ in replies}
        unserved = [s for s in range(self.num_slots) if s not in collected.served]
        live = self._live()
        routes = self._routes(live, unserved) if unserved else {}
        if routes:  # devices failed during this request: their slots' standby copies, now
            retry = [self._ask(d, link, False, routes[d.name])
                     for d, link in live if d.name in routes]
            replies, sent = self._exchange(retry, wire, n, failover_deadline or deadline,
                                           self.send_orders.order(absent))
            self._collect(collected, replies, sent, started)
            absent |= {a.device.name for a in retry} - {a.device.name for a, _, _ in replies}
        received = time.perf_counter()
        features, mask = collected.features, collected.mask
        logits = self.fusion(features, mask) if self.takes_mask else self.fusion(features)
        done = time.perf_counter()
        trace = RequestTrace(devices=collected.traces, fusion_start_s=received - started,
                             end_s=done - started)
        unserved = sorted(set(range(self.num_slots)) - collected.served)
        lacking = {self.slot_device[s] for s in unserved}
        return FleetAnswer(logits=logits, missing=self._failures(absent),
                           device_s=collected.device_s,
                           fusion_s=done - received, elapsed_s=done - started, trace=trace,
                           standby={d: sorted(b) for d, b in collected.standby.items()},
                           lacking=self._failures(lacking),
                           unserved_slots=unserved)

    def _ask(self, device: _Device, link: Link, primaries: bool,
             standby: Sequence[int]) -> "_Ask":
        """What `device` is asked: its own sub-models (`primaries`) and the standby copies of
        `standby`; the width it answers follows from them."""
        width = (device.width if primaries else 0) + sum(self.slot_widths[s] for s in standby)
        return _Ask(device, link, primaries, tuple(standby), width)

    def _routes(self, live: list[tuple[_Device, Link]], slots: list[int]) -> dict[str, list[int]]:
        """standby device -> the slots of `slots` it is to serve (those whose copy is on a live
        device)."""
        names = {d.name for d, _ in live}
        routes: dict[str, list[int]] = {}
        for s in slots:
            if self.slot_standby[s] in names:
                routes.setdefault(self.slot_standby[s], []).append(s)
        return routes

    def _collect(self, into: "_Collected", replies: list[tuple["_Ask", torch.Tensor, float]],
                 sent: dict[str, tuple[float, float | None]], started: float) -> None:
        """Each reply's features into the fusion input: the device's own slots, then the standby
        slots it was asked, in order."""
        for ask, reply, received_at in replies:
            device = ask.device
            values, times = protocol.unpack_features(reply, into.n, ask.width)
            offset = 0
            if ask.primaries and device.width:
                into.put(values[:, :device.width], device.columns, device.slots)
                offset = device.width
            for s in ask.standby:
                width = self.slot_widths[s]
                into.put(values[:, offset:offset + width], self.slot_columns[s], [s])
                into.standby.setdefault(self.slot_device[s], set()).add(device.name)
                offset += width
            into.device_s[device.name] = into.device_s.get(device.name, 0.0) + times.compute_s
            send_start, send_end = sent[device.name]
            into.traces.setdefault(device.name, DeviceTrace(
                input_send_start_s=send_start - started,
                input_sent_s=(send_end or received_at) - started,
                input_arrived_s=times.input_arrived_at - started,
                features_ready_s=times.features_ready_at - started,
                features_received_s=received_at - started, compute_cpu_s=times.compute_cpu_s))

    def ping(self, timeout_s: float) -> None:
        """A request of no images to every live device: finds a dead or hung one while idle."""
        asks = [self._ask(d, link, True, ()) for d, link in self._live()]
        self._exchange(asks, None, 0, time.monotonic() + timeout_s)

    def calibrate(self, batch: int) -> dict[str, float]:
        """Each device times its extractor alone on `batch` images (one device at a time)."""
        alone = {}
        for device, link in self._live():
            answer = torch.zeros(1, dtype=torch.float32)
            recv = self._post(device, link, link.irecv, answer)
            sends = [self._post(device, link, link.isend, t)
                     for t in protocol.control(protocol.CALIBRATE, batch)]
            deadline = time.monotonic() + self.config.timeout_s
            if all(self._wait(device, link, w, deadline) for w in sends) and \
                    self._wait(device, link, recv, deadline):
                alone[device.name] = float(answer)
        return alone

    def _live(self) -> list[tuple[_Device, Link]]:
        """(device, its link) of every device serving now. Each exchange keeps to these links: a
        device that rejoins meanwhile gets a new link, which an old operation never touches."""
        with self.lock:
            return [(d, d.link) for d in self.devices if d.link is not None]

    def _exchange(self, asks: list["_Ask"], pixels: torch.Tensor | None, n: int,
                  deadline: float, order: list[str] | None = None
                  ) -> tuple[list[tuple["_Ask", torch.Tensor, float]],
                             dict[str, tuple[float, float | None]]]:
        """Send each device what it is asked (and the pixels), collect each one's reply:
        (ask, reply, when it was in) and, per device, when sending started and (sent in
        `order`, one after another) was acknowledged."""
        replies = [protocol.reply_buffer(n, a.width) for a in asks]
        # Every receive is posted before the first send: no reply waits for a buffer, and on a host
        # with fewer cores than processes the woken workers do not preempt the posting.
        receives = [self._post(a.device, a.link, a.link.irecv, r) for a, r in zip(asks, replies)]
        ordered = [a for a in asks if n and order and a.device.name in order]
        at_once = [a for a in asks if a not in ordered]
        start = time.perf_counter()
        sent: dict[str, tuple[float, float | None]] = {a.device.name: (start, None)
                                                       for a in at_once}
        sends = {a.device.name: [self._post(a.device, a.link, a.link.isend, t)
                                 for t in a.messages(protocol.REQUEST, pixels, n)]
                 for a in at_once}
        receipts = self._send_in_order(
            sorted(ordered, key=lambda a: order.index(a.device.name)), pixels, n, deadline)
        answered = []
        for ask, recv, reply in zip(asks, receives, replies):
            device, link = ask.device, ask.link
            if device.name in receipts:
                send_start, receipt = receipts[device.name]
                sent[device.name] = (send_start, receipt.result())  # over by the deadline
                if sent[device.name][1] is None:
                    continue  # dropped: the receipt's wait failed or ran out
            elif not all(self._wait(device, link, w, deadline) for w in sends[device.name]):
                continue
            if self._wait(device, link, recv, deadline):
                answered.append((ask, reply, time.perf_counter()))
        return answered, sent

    def _send_in_order(self, ordered: list["_Ask"], pixels: torch.Tensor, n: int,
                       deadline: float) -> dict[str, tuple[float, Future]]:
        """Send each device of `ordered` its input once the previous one acknowledged its own:
        device -> (send started, the wait for its receipt: when it came, None if never). A
        device that has not acknowledged within its share of the time left (split evenly over
        it, the devices after it and the compute) is waited for no longer before the next send
        starts, though still until `deadline`: a hung device holds up nobody else's input, and
        a send slower than its share only overlaps the next one."""
        receipts = {}
        for i, ask in enumerate(ordered):
            device, link = ask.device, ask.link
            start = time.perf_counter()
            receipt = torch.zeros(1, dtype=torch.int64)
            works = [self._post(device, link, link.isend, t)
                     for t in ask.messages(protocol.REQUEST_ACKNOWLEDGED, pixels, n)]
            works.append(self._post(device, link, lambda t: link.irecv(t, protocol.RECEIPT_TAG),
                                    receipt))
            wait = self._receipts.submit(self._acknowledged_at, device, link, works, deadline)
            receipts[device.name] = (start, wait)
            share = max(deadline - time.monotonic(), 0.0) / (len(ordered) - i + 1)
            with contextlib.suppress(FutureTimeout):
                wait.result(timeout=share)
        return receipts

    def _acknowledged_at(self, device: _Device, link: Link, works: list,
                         deadline: float) -> float | None:
        """When every send of `works` went out and the receipt came in (None: it never did)."""
        if all(self._wait(device, link, w, deadline) for w in works):
            return time.perf_counter()
        return None

    def _post(self, device: _Device, link: Link, operation, tensor: torch.Tensor):
        """Start a send or receive on `link` (None once it is gone: gloo also refuses at once on
        a pair it already knows is closed)."""
        if device.link is not link:
            return None
        try:
            return operation(tensor)
        except RuntimeError as exc:
            self._drop(device, link, None, self._reason(device, exc))
            return None

    def _wait(self, device: _Device, link: Link, work, deadline: float) -> bool:
        """Wait for one operation on `link` until `deadline`; a failure drops the link."""
        if device.link is not link or work is None:
            return False
        remaining = max(deadline - time.monotonic(), 1e-3)
        try:
            work.wait(timedelta(seconds=remaining))
            return True
        except RuntimeError as exc:
            self._drop(device, link, work, self._reason(device, exc))
            return False

    def _drop(self, device: _Device, link: Link, work, reason: str) -> None:
        with self.changed:
            if device.link is not link:
                return  # already dropped, or replaced by a rejoined worker's link
            device.abandoned.extend([link, work])  # gloo works must outlive their wait
            device.link, device.problem, device.final = None, reason, True
            self.failures.append(DeviceFailure(device=device.name, rank=device.rank,
                                               reason=reason))
            self.changed.notify_all()
        log.warning("device %s (rank %d) failed: %s", device.name, device.rank, reason)
        if self.on_lost is not None and not self._closed.is_set():
            self.on_lost(device.rank)

    def _reason(self, device: _Device, exc: RuntimeError) -> str:
        text = str(exc)
        if "Timed out" in text or "timeout" in text.lower():
            reason = f"no answer within {self.config.timeout_s:g} s (hung or too slow)"
            status = self.exit_status(device.rank) if self.exit_status else None
        else:
            reason = "connection lost"
            status = self._exit_status(device.rank)
        return f"{reason}; process {status}" if status else reason

    def _exit_status(self, rank: int) -> str | None:
        """How a local worker ended, waiting briefly for the OS to report a death just seen."""
        if self.exit_status is None:
            return None
        deadline = time.monotonic() + EXIT_STATUS_GRACE_S
        while (status := self.exit_status(rank)) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return status

    # ------------------------------------------------------------------ the end

    def close(self, reason: str = "") -> None:
        """Say bye to every live worker, tell late joiners to leave, stop watching."""
        self._closed.set()
        close_fleet(self.store, reason)
        deadline = time.monotonic() + self.config.timeout_s
        bye = protocol.control(protocol.BYE)[0]
        works = [(d, link, self._post(d, link, link.isend, bye)) for d, link in self._live()]
        for device, link, work in works:
            self._wait(device, link, work, deadline)
        if self._watcher.is_alive():
            self._watcher.join(timeout=1.0)
        self._receipts.shutdown(wait=False)


def _send_orders(source: DeploymentSource, input_order: list[str] | str) -> SendOrders:
    """The send orders a fleet uses: the deployment's planned ones ("plan"; at once where it has
    none), none ("at-once"), or one listed order whatever is down."""
    if input_order == "plan":
        planned = getattr(source, "send_orders", None)
        return planned() if planned else SendOrders()
    if input_order == "at-once":
        return SendOrders()
    return SendOrders(normal=list(input_order))
