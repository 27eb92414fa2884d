"""`edvit whatif INVENTORY.yaml --vary KIND=A..B ...`: one optimal plan per fleet in a sweep.

Prints a table (or `--json`), optionally writes it as CSV (`--out`) and a plot (`--plot`: makespan
against device count, one line per varied key, greedy dashed beside optimal, the target as a line;
the plotted data as CSV next to the PNG). With `--target-latency` it names the cheapest fleet that
meets the target; exit code 3 when none in the range does.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from planner.cli.common import (
    Command,
    add_max_devices_argument,
    check_outputs_of,
    csv_beside,
    print_json,
    progress_bar,
)
from planner.cli.solve_cmd import solver_config
from planner.errors import InputError
from planner.files import atomic_file, write_text_atomic
from planner.inventory import load_inventory, referenced_files
from planner.limits import MAX_SCENARIOS
from planner.whatif import what_if

DEFAULT_MAX_SCENARIOS = 200
EXIT_TARGET_MISSED = 3
_SPEC = re.compile(r"^\s*([^=\s]+)\s*=\s*(.+?)\s*$")
_RANGE = re.compile(r"^([0-9]{1,19})\s*\.\.\s*([0-9]{1,19})$", re.ASCII)
_LIST = re.compile(r"[0-9]{1,19}(\s*,\s*[0-9]{1,19})*", re.ASCII)

CSV_FIELDS = ("status", "makespan_s", "bound_s", "greedy_makespan_s", "devices_total",
              "devices_used", "num_submodels", "total_mem_bytes", "worst_loss_pp", "aggregator",
              "aggregator_kind", "aggregator_changed", "cost_usd", "binding", "note",
              "makespan_without_standby_s", "worst_failover_makespan_s")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inventory", metavar="INVENTORY.yaml")
    parser.add_argument("--vary", action="append", required=True, metavar="KIND=A..B",
                        help="device kind (or inventory entry name) and its counts: A..B, N or "
                             "A,B,C; repeat for more kinds (every combination is a scenario)")
    parser.add_argument("--target-latency", type=float, metavar="S",
                        help="also report the cheapest fleet with a makespan within S seconds")
    parser.add_argument("--profile", metavar="PROFILE.json",
                        help="profile from `edvit profile` (default: as `edvit plan`)")
    parser.add_argument("--time-limit", type=float, metavar="S",
                        help="solver limit per scenario (default: inventory's solver.time_limit_s)")
    parser.add_argument("--seed", type=int, help="solver seed (default: inventory's solver.seed)")
    parser.add_argument("--processes", type=int, metavar="N",
                        help="parallel solves (default: the available cores)")
    parser.add_argument("--out", metavar="WHATIF.csv", help="write the table as CSV")
    parser.add_argument("--plot", metavar="WHATIF.png",
                        help="write a plot (PNG) and its data (<name>_data.csv) next to it")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("--max-scenarios", type=int, default=DEFAULT_MAX_SCENARIOS, metavar="N",
                        help="refuse larger sweeps without --yes "
                             f"(default {DEFAULT_MAX_SCENARIOS})")
    parser.add_argument("--yes", action="store_true",
                        help=f"run sweeps above --max-scenarios (up to {MAX_SCENARIOS})")
    add_max_devices_argument(parser)


def parse_vary(specs: list[str]) -> dict[str, range | list[int]]:
    """`KIND=A..B` / `KIND=N` / `KIND=A,B,C` flags -> {kind: counts}; InputError on bad specs.
    Counts are ASCII digits; a range stays a `range` (what_if bounds it before listing it)."""
    vary: dict[str, range | list[int]] = {}
    for spec in specs:
        match = _SPEC.match(spec)
        if not match:
            raise InputError("expected KIND=A..B (e.g. pi4b-4gb=1..8)", field="--vary", value=spec)
        key, counts = match.groups()
        if key in vary:
            raise InputError("kind given twice", field="--vary", value=spec)
        span = _RANGE.match(counts)
        if span:
            low, high = int(span.group(1)), int(span.group(2))
            if high < low:
                raise InputError("inverted range (empty)", field="--vary", value=spec)
            vary[key] = range(low, high + 1)
        elif _LIST.fullmatch(counts):
            vary[key] = [int(n) for n in counts.split(",")]
        else:
            raise InputError("counts must be A..B, N or A,B,C with integers >= 0",
                             field="--vary", value=spec)
    return vary


def run(args: argparse.Namespace) -> int:
    vary = parse_vary(args.vary)
    for flag in ("processes", "max_scenarios", "target_latency"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise InputError("must be > 0", field=f"--{flag.replace('_', '-')}", value=value)
    plot = Path(args.plot) if args.plot else None
    if plot is not None and plot.suffix.lower() != ".png":
        raise InputError("the plot is written as PNG; name it *.png", field="--plot",
                         value=args.plot)
    inventory = load_inventory(args.inventory)
    base_dir = Path(args.inventory).parent
    check_outputs_of(args, {"--out": args.out, "--plot": plot,
                            "--plot (data)": plot and csv_beside(plot)},
                     inputs=referenced_files(inventory, base_dir))
    out = Path(args.out) if args.out else None
    config = solver_config(args, start=inventory.solver)
    with progress_bar("what-if", enabled=True) as progress:
        result = what_if(inventory, vary, target_latency_s=args.target_latency,
                         base_dir=base_dir, profile_path=args.profile,
                         config=config, processes=args.processes,
                         max_scenarios=None if args.yes else args.max_scenarios,
                         progress=progress, source=args.inventory)
    if out is not None:
        write_text_atomic(out, table_csv(result))
    if plot is not None:
        write_plot(result, plot)
    if args.json:
        print_json(result.model_dump(mode="json"))
    else:
        print(format_table(result))
    missed = result.cheapest is not None and not result.cheapest.found
    return EXIT_TARGET_MISSED if missed else 0


def table_csv(result) -> str:
    """One row per scenario: the varied counts, then CSV_FIELDS."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    keys = list(result.varied)
    writer.writerow(keys + list(CSV_FIELDS))
    for s in result.scenarios:
        row = s.model_dump()
        writer.writerow([s.counts[k] for k in keys]
                        + ["" if row[f] is None else _cell(row[f]) for f in CSV_FIELDS])
    return buffer.getvalue()


def _cell(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def format_table(result) -> str:
    keys = list(result.varied)
    standby = any(s.standby for s in result.scenarios)   # resilience: what standby costs
    head = " ".join(f"{k:>{max(len(k), 4)}}" for k in keys)
    lines = [f"what-if {result.inventory}: {len(result.scenarios)} scenario(s) in "
             f"{result.wall_time_s:.1f} s on {result.processes} process(es)",
             f"  {head} {'status':>10} {'makespan ms':>11} "
             + (f"{'no-standby ms':>13} {'1-fail ms':>10} " if standby else "")
             + f"{'greedy ms':>10} {'used':>5} "
             f"{'mem MiB':>8} {'loss':>5} {'cost $':>8}  aggregator"]
    for s in result.scenarios:
        counts = " ".join(f"{s.counts[k]:>{max(len(k), 4)}}" for k in keys)
        lines.append(
            f"  {counts} {s.status:>10} {_ms(s.makespan_s):>11} "
            + (f"{_ms(s.makespan_without_standby_s):>13} {_ms(s.worst_failover_makespan_s):>10} "
               if standby else "")
            + f"{_ms(s.greedy_makespan_s):>10} "
            f"{s.devices_used:>5} "
            f"{'-' if s.total_mem_bytes is None else f'{s.total_mem_bytes / 2**20:.0f}':>8} "
            f"{'-' if s.worst_loss_pp is None else f'{s.worst_loss_pp:g}':>5} "
            f"{'-' if s.cost_usd is None else f'{s.cost_usd:,.0f}':>8}  {s.aggregator}"
            + (f"  [{s.note}]" if s.note else ""))
    lines.extend(f"  note: {note}" for note in result.notes)
    if result.cheapest is not None:
        lines.append(f"  {result.cheapest.statement}")
    return "\n".join(lines)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def plot_lines(result) -> list[dict]:
    """The plotted points: for each varied key, its counts with the other keys at their lowest."""
    keys = list(result.varied)
    index = {tuple(s.counts[k] for k in keys): s for s in result.scenarios}
    points = []
    for key in keys:
        held = {k: result.varied[k][0] for k in keys if k != key}
        for n in result.varied[key]:
            s = index.get(tuple(n if k == key else held[k] for k in keys))
            if s is None:
                continue
            points.append({"line": key, "held": ";".join(f"{k}={v}" for k, v in held.items()),
                           "count": n, "status": s.status, "makespan_s": s.makespan_s,
                           "greedy_makespan_s": s.greedy_makespan_s,
                           "aggregator_changed": s.aggregator_changed})
    return points


def write_plot(result, path: Path) -> None:
    """PNG (matplotlib object API, Agg) plus `<stem>_data.csv` with the plotted points."""
    points = plot_lines(result)
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    for i, key in enumerate(result.varied):
        line = [p for p in points if p["line"] == key]
        held = f" ({line[0]['held']})" if line and line[0]["held"] else ""
        colour = colours[i % len(colours)]
        optimal = [(p["count"], p["makespan_s"]) for p in line if p["makespan_s"] is not None]
        greedy = [(p["count"], p["greedy_makespan_s"]) for p in line
                  if p["greedy_makespan_s"] is not None]
        if optimal:
            ax.plot(*zip(*optimal), marker="o", color=colour, label=f"{key}{held}: optimal")
        if greedy:
            ax.plot(*zip(*greedy), marker="x", linestyle="--", color=colour,
                    label=f"{key}{held}: greedy")
    if result.target_latency_s is not None:
        ax.axhline(result.target_latency_s, color="black", linestyle=":",
                   label=f"target {result.target_latency_s:g} s")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("devices of the varied kind")
    ax.set_ylabel("makespan (s)")
    ax.set_yscale("log")
    ax.set_title(f"what-if: {result.inventory}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    buffer = io.StringIO()
    fields = ["line", "held", "count", "status", "makespan_s", "greedy_makespan_s",
              "aggregator_changed"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for p in points:
        writer.writerow({k: "" if p[k] is None else _cell(p[k]) for k in fields})
    write_text_atomic(csv_beside(path), buffer.getvalue())


COMMANDS = {"whatif": Command(add_arguments, run, description=__doc__)}
