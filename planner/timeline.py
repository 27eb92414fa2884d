"""One request of a plan as a timeline: per device, waiting for its input, receiving it, computing
each sub-model, sending its features; then the fusion on the aggregator. The critical path (the
sends over the aggregator's link up to the device that finishes last, that device's own work,
then the fusion) is marked.

`timeline_phases(plan)` is plain data (also what `benchmarks/fleet_emulation.py` draws beside a
measured run); `timeline_csv` writes it; `write_timeline(plan, path)` draws a Gantt chart PNG with
matplotlib's object API on the Agg canvas (imported there only) and writes the CSV beside it as
`<stem>_data.csv`. Both writes are atomic.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from planner.errors import InputError
from planner.plan_schema import Plan

PHASES = ("waiting", "receiving", "compute", "sending features", "fusion")
COLOURS = {"waiting": "#d9d9d9", "receiving": "tab:orange", "compute": "tab:blue",
           "sending features": "tab:green", "fusion": "tab:purple"}


@dataclass(frozen=True)
class Phase:
    """One bar of the chart: what a device does from start_s to end_s (seconds from the request)."""

    device: str
    phase: str                # one of PHASES
    start_s: float
    end_s: float
    critical: bool
    submodel: int | None = None   # index into plan.submodels for compute and sending features


def timeline_phases(plan: Plan) -> list[Phase]:
    """The phases of one request under the plan's own figures (the checker's schedule)."""
    if plan.makespan_s is None or plan.fusion is None:
        raise InputError("a timeline needs a plan; this one has none", field="status",
                         value=plan.status)
    transfer = plan.input
    arrival = dict(transfer.input_arrival_s) if transfer else {}
    sent = dict(transfer.transfer_s) if transfer else {}
    finish: dict[str, float] = {}
    phases: list[Phase] = []
    order = list(dict.fromkeys(sm.device for sm in plan.submodels))
    for device in order:
        start = arrival.get(device, 0.0)
        if sent.get(device):
            if start - sent[device] > 0:
                phases.append(Phase(device, "waiting", 0.0, start - sent[device], False))
            phases.append(Phase(device, "receiving", start - sent[device], start, False))
        for k, sm in enumerate(plan.submodels):
            if sm.device != device:
                continue
            done = start + sm.latency.compute_s + sm.latency.overhead_s
            phases.append(Phase(device, "compute", start, done, False, k))
            if sm.latency.comm_s:
                phases.append(Phase(device, "sending features", done, done + sm.latency.comm_s,
                                    False, k))
            start = done + sm.latency.comm_s
        finish[device] = start
    last = max(order, key=lambda d: finish[d])  # ties: the first listed
    fusion_start = finish[last]
    phases.append(Phase(plan.fusion.device, "fusion", fusion_start,
                        fusion_start + plan.fusion.latency_s, True))
    send_order = transfer.send_order if transfer else []
    before = set(send_order[:send_order.index(last)]) if last in send_order else set()
    return [_mark_critical(p, last, before) for p in phases]


def _mark_critical(phase: Phase, last: str, sent_before: set[str]) -> Phase:
    """The critical path: the link sending the input to the devices before the last one to
    finish, then that device's own receiving, compute and sending (then the fusion)."""
    on_path = (phase.device == last and phase.phase != "waiting") or \
        (phase.device in sent_before and phase.phase == "receiving")
    return Phase(**(asdict(phase) | {"critical": True})) if on_path else phase


def timeline_csv(phases: list[Phase]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    names = [f.name for f in fields(Phase)]
    writer.writerow(names)
    for p in phases:
        writer.writerow(["" if getattr(p, n) is None else
                         repr(getattr(p, n)) if isinstance(getattr(p, n), float) else
                         getattr(p, n) for n in names])
    return buffer.getvalue()


def write_timeline(plan: Plan, path: str | Path) -> Path:
    """Gantt chart PNG at `path` and its data as `<stem>_data.csv` beside it; returns the CSV."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from planner.files import atomic_file, write_text_atomic

    path = Path(path)
    phases = timeline_phases(plan)
    devices = list(dict.fromkeys(p.device for p in phases if p.phase != "fusion"))
    if plan.fusion.device not in devices:
        devices.append(plan.fusion.device)
    lane = {d: i for i, d in enumerate(devices)}
    fig = Figure(figsize=(10, 1.6 + 0.45 * len(devices)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for p in phases:
        ax.barh(lane[p.device], (p.end_s - p.start_s) * 1e3, left=p.start_s * 1e3, height=0.6,
                color=COLOURS[p.phase], edgecolor="black" if p.critical else "none",
                linewidth=1.5 if p.critical else 0)
    end = max(p.end_s for p in phases)
    ax.axvline(end * 1e3, color="black", linestyle=":", linewidth=1)
    ax.set_yticks(range(len(devices)), labels=devices)
    ax.invert_yaxis()
    ax.set_xlabel("time from the request (ms)")
    ax.set_title(f"{plan.name}: one request, makespan {plan.makespan_s * 1e3:.1f} ms "
                 "(outlined: critical path)")
    handles = [Patch(color=COLOURS[name], label=name) for name in PHASES
               if any(p.phase == name for p in phases)]
    handles.append(Patch(facecolor="white", edgecolor="black", linewidth=1.5,
                         label="critical path"))
    ax.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    data = path.with_name(f"{path.stem}_data.csv")
    write_text_atomic(data, timeline_csv(phases))
    return data
