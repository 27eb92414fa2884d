"""One request drawn as a Gantt chart: the plan's prediction beside the emulated fleet's measurement.

The predicted panel is `planner.timeline.timeline_phases(plan)` (what `edvit plan --timeline`
draws); the measured one holds the same phases (waiting for the input, receiving it, compute,
sending features, fusion) at the medians over the requests of the moments the runtime's trace
records. Features sent back are drawn only when the input went to every device at once: with one
device after another, the aggregator collects the features after its last send, so their arrival
is not measured. The critical path is outlined (measured: the device that finished last, then the
fusion). matplotlib's object API on the Agg canvas; the bars are written as CSV beside the PNG.
"""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import asdict, fields
from pathlib import Path

from planner.files import atomic_file, write_text_atomic
from planner.plan_schema import load_plan
from planner.timeline import COLOURS, PHASES, Phase, timeline_phases
from profiler.emulation.check import WARMUP_REQUESTS, PlanCheck


def measured_phases(check: PlanCheck, fusion_device: str) -> list[Phase]:
    """Medians over the requests (after the warm-up ones) of every traced moment."""
    traces = check.traces[WARMUP_REQUESTS:] or check.traces

    def median(key: str, device: str | None = None) -> float:
        values = [t[key] if device is None else t["devices"][device][key] for t in traces]
        return statistics.median(values)

    last = max(check.devices, key=lambda d: d.done.median_s).device
    phases = []
    for d in check.devices:
        start, arrived = median("input_send_start_s", d.device), median("input_arrived_s", d.device)
        ready = median("features_ready_s", d.device)
        on_path = d.device == last
        if start > 0:
            phases.append(Phase(d.device, "waiting", 0.0, start, False))
        phases.append(Phase(d.device, "receiving", start, max(arrived, start), on_path))
        phases.append(Phase(d.device, "compute", max(arrived, start), ready, on_path))
        if check.input_order is None:
            back = median("features_received_s", d.device)
            phases.append(Phase(d.device, "sending features", ready, max(back, ready), on_path))
    phases.append(Phase(fusion_device, "fusion", median("fusion_start_s"), median("end_s"), True))
    return phases


def draw_timeline(check: PlanCheck, png: Path, title: str) -> Path:
    """Write `png` (predicted left, measured right, one time axis) and its CSV beside it
    (`<stem>.csv`: a `panel` column, then planner.timeline.Phase's fields); returns the CSV."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    plan = load_plan(check.plan_path)
    panels = {"predicted": timeline_phases(plan),
              "measured": measured_phases(check, plan.fusion.device)}
    rows = list(dict.fromkeys(p.device for phases in panels.values() for p in phases))
    end_ms = max(p.end_s for phases in panels.values() for p in phases) * 1e3 * 1.05
    figure = Figure(figsize=(13, 1.6 + 0.45 * len(rows)))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2, sharey=True)
    for ax, (panel, phases) in zip(axes, panels.items()):
        for p in phases:
            ax.barh(rows.index(p.device), (p.end_s - p.start_s) * 1e3, left=p.start_s * 1e3,
                    height=0.6, color=COLOURS[p.phase],
                    edgecolor="black" if p.critical else "none",
                    linewidth=1.5 if p.critical else 0)
        total_ms = max(p.end_s for p in phases) * 1e3
        ax.axvline(total_ms, color="black", linestyle=":", linewidth=1)
        ax.set_title(f"{panel}: {total_ms:.1f} ms")
        ax.set_xlim(0, end_ms)
        ax.set_xlabel("time from the request (ms)")
        ax.set_yticks(range(len(rows)), labels=rows)
        ax.grid(True, axis="x", alpha=0.3)
    axes[0].invert_yaxis()
    handles = [Patch(color=COLOURS[name], label=name) for name in PHASES]
    handles.append(Patch(facecolor="white", edgecolor="black", linewidth=1.5,
                         label="critical path"))
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize="small")
    figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.07, 1, 0.95))
    with atomic_file(png) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    names = [f.name for f in fields(Phase)]
    writer.writerow(["panel", *names])
    for panel, phases in panels.items():
        for p in phases:
            row = asdict(p)
            writer.writerow([panel, *("" if row[n] is None else row[n] for n in names)])
    out = png.with_suffix(".csv")
    write_text_atomic(out, text.getvalue())
    return out
