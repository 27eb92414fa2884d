"""The plan's prediction against real `edvit worker` fleets emulated on this host (Linux, root).

Each fleet is an aggregator and 2-5 devices, each in its own network namespace with its link shaped
by `tc tbf` on both ends (bandwidth only: this kernel has no netem) and its processes in a cgroup
with a CPU quota (10 ms period) and a memory limit (profiler.emulation.fleet; everything is removed
afterwards, also on failure or a signal). Per fleet: `edvit calibrate --link-to` inside every node,
`edvit plan` on the calibrated kinds, then every plan served as a synthetic deployment (random
weights, the plan's shapes) with one `edvit worker` per node. Printed per fleet and plan: each
device's predicted and measured input arrival, compute and completion (median, p95), and end to
end; then one summary table. `--timeline` draws each served plan's request (predicted beside
measured, CSV beside the PNG).

    sudo python benchmarks/fleet_emulation.py                     # every fleet of FLEETS
    sudo python benchmarks/fleet_emulation.py --fleets f1,f2 --images 20 --timeline out/

The host's load (uptime) is printed with every table: other jobs on a 2-core host take CPU the
quotas assume is there.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from profiler.emulation.check import (  # noqa: E402
    EDVIT,
    PLANNERS,
    CaseResult,
    FleetCase,
    run_case,
)
from profiler.emulation.fleet import NodeSpec, unavailable_reason  # noqa: E402

MBIT = 1e6
GIB = 1 << 30
TARGET = 0.15


def _fleet(name: str, aggregator: tuple[float, float], *devices: tuple[float, float],
           arch: str = "vit_small_patch16_224", img_size: int = 112) -> FleetCase:
    """(Mbit/s, share of a core) for the aggregator and each device."""
    agg = NodeSpec("agg", aggregator[0] * MBIT, aggregator[1], 3 * GIB)
    nodes = tuple(NodeSpec(f"d{i}", mbit * MBIT, cores, 2 * GIB)
                  for i, (mbit, cores) in enumerate(devices, start=1))
    return FleetCase(name, agg, nodes, arch=arch, img_size=img_size)


# 2-50 Mbit/s, 15-60 % of a core; the quotas of a fleet add up to at most 1.6 cores.
FLEETS = {
    "f1": _fleet("f1", (50, 0.6), (50, 0.3), (50, 0.3)),
    "f2": _fleet("f2", (20, 0.5), (10, 0.3), (5, 0.3)),
    "f3": _fleet("f3", (10, 0.4), (10, 0.4), (10, 0.4), (10, 0.4)),
    "f4": _fleet("f4", (50, 0.25), (50, 0.6), (20, 0.45), (5, 0.3)),
    "f5": _fleet("f5", (5, 0.6), (20, 0.3), (20, 0.3)),
    "f6": _fleet("f6", (2, 0.6), (2, 0.5), (2, 0.3)),
    "f7": _fleet("f7", (50, 0.15), (50, 0.3), (50, 0.3), (50, 0.3), (50, 0.3), (50, 0.15)),
    "f8": _fleet("f8", (30, 0.3), (30, 0.15), (30, 0.15), (30, 0.15), (30, 0.15)),
    "f9": _fleet("f9", (20, 0.6), (5, 0.15), (50, 0.6),
                 arch="vit_tiny_patch16_224", img_size=112),
}


def host_load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def ensure_profile(case: FleetCase, out_dir: Path) -> Path:
    """The profile of the case's model at its image size (computed once, cached by the profiler)."""
    path = out_dir / f"profile-{case.arch}-{case.img_size}.json"
    if not path.exists():
        subprocess.run([*EDVIT, "profile", "--arch", case.arch, "--img-size", str(case.img_size),
                        "--num-classes", str(case.num_classes), "--out", str(path)],
                       check=True, capture_output=True)
    return path


def selected_cases(prog: str, fleets: str, images: int) -> list[FleetCase] | int:
    """The FLEETS of a comma-separated list, each serving `images` requests per run, or the
    exit code: 0 when this host cannot emulate a fleet (printed why), 2 for an unknown name."""
    reason = unavailable_reason()
    if reason:
        print(f"{prog}: skipped: {reason}")
        return 0
    names = [n.strip() for n in fleets.split(",") if n.strip()]
    unknown = [n for n in names if n not in FLEETS]
    if unknown:
        print(f"{prog}: error: --fleets: unknown fleet {unknown[0]!r}", file=sys.stderr)
        return 2
    return [dataclasses.replace(FLEETS[n], images=images) for n in names]


def announce(case: FleetCase, work: Path) -> Path:
    """Print the fleet and the host's load; the case's profile (computed once into `work`)."""
    profile = ensure_profile(case, work)
    print(f"\n== {case.name}: {case.arch} at {case.img_size} px; {fleet_description(case)}",
          flush=True)
    print(f"   host load before: {host_load()}", flush=True)
    return profile


def fleet_description(case: FleetCase) -> str:
    return ", ".join(f"{n.name} {n.link_bits_per_s / MBIT:g} Mbit/s {n.cpu_cores * 100:.0f}%"
                     for n in case.nodes)


def device_table(result: CaseResult) -> str:
    lines = []
    for check in result.checks:
        transfer = (f" (with the input transfer {check.transfer_makespan_s * 1e3:.1f} ms)"
                    if check.transfer_makespan_s is not None else "")
        rounds = (f" after {check.refine_rounds} refinement(s)" if check.refine_rounds else "")
        lines.append(f"\n{result.case.name} / {check.label}{rounds}: predicted makespan "
                     f"{check.predicted_makespan_s * 1e3:.1f} ms{transfer}, measured median "
                     f"{check.end_to_end.median_s * 1e3:.1f} ms, p95 "
                     f"{check.end_to_end.p95_s * 1e3:.1f} ms (x{check.ratio:.2f}); input order "
                     f"{','.join(check.input_order) if check.input_order else 'all at once'}")
        lines.append(f"  {'device':<8} {'ratio':>6} {'arrival ms':>22} {'compute ms':>22} "
                     f"{'done ms':>22} {'CPU ms':>14} {'on curve':>8}")
        lines.append(f"  {'':<8} {'':>6} " + " ".join(f"{'pred':>6} {'med':>7} {'p95':>7}"
                                                       for _ in range(3))
                     + f" {'pred':>6} {'med':>7} {'med':>8}")
        for d in check.devices:
            cells = []
            for predicted, spread in ((d.predicted_arrival_s, d.arrival),
                                      (d.predicted_compute_s, d.compute),
                                      (d.predicted_done_s, d.done)):
                cells.append(f"{predicted * 1e3:>6.1f} {spread.median_s * 1e3:>7.1f} "
                             f"{spread.p95_s * 1e3:>7.1f}")
            if d.compute_cpu is not None:  # the CPU the run took, and its wall on the curve
                cells.append(f"{d.predicted_cpu_s * 1e3:>6.1f} "
                             f"{d.compute_cpu.median_s * 1e3:>7.1f} "
                             f"{d.on_curve.median_s * 1e3:>8.1f}")
            ratios = "+".join(f"{r:g}" for r in d.ratios)
            lines.append(f"  {d.device:<8} {ratios:>6} " + " ".join(cells))
        lines.append(f"  {'fusion':<8} {'':>6} {'':>22} {check.predicted_fusion_s * 1e3:>6.2f} "
                     f"{check.fusion.median_s * 1e3:>7.2f} {check.fusion.p95_s * 1e3:>7.2f}")
    return "\n".join(lines)


def summary_table(results: list[CaseResult]) -> str:
    lines = [f"{'fleet':<6} {'plan':<14} {'devices':>7} {'predicted ms':>12} {'median ms':>10} "
             f"{'p95 ms':>8} {'measured/pred':>13} {'within 15%':>10} {'w/ transfer ms':>14} "
             f"{'measured/it':>11} {'CPU drift':>9} {'w/ served CPU':>13} {'x':>5}"]
    for result in results:
        for check in result.checks:
            within = abs(check.ratio - 1) <= TARGET
            transfer = (f"{check.transfer_makespan_s * 1e3:>14.1f} {check.transfer_ratio:>11.2f}"
                        if check.transfer_makespan_s is not None else "")
            # the critical device's served CPU over its calibrated CPU: the host's drift
            critical = max(check.devices, key=lambda d: d.predicted_done_s)
            drift = f"{critical.cpu_ratio:>9.2f}" if critical.cpu_ratio else ""
            if check.served_cpu_makespan is not None:
                drift += (f" {check.served_cpu_makespan.median_s * 1e3:>13.1f} "
                          f"{check.served_cpu_ratio:>5.2f}")
            lines.append(f"{result.case.name:<6} {check.label:<14} {len(check.devices):>7} "
                         f"{check.predicted_makespan_s * 1e3:>12.1f} "
                         f"{check.end_to_end.median_s * 1e3:>10.1f} "
                         f"{check.end_to_end.p95_s * 1e3:>8.1f} {check.ratio:>13.2f} "
                         f"{'yes' if within else 'no':>10} {transfer} {drift}")
    for label in dict.fromkeys(c.label for r in results for c in r.checks):
        checks = [c for r in results for c in r.checks if c.label == label]
        hits = sum(abs(c.ratio - 1) <= TARGET for c in checks)
        lines.append(f"plan {label}: {hits} of {len(checks)} fleets within +-15 % "
                     f"(target: >= 7 of >= 8)")
        served = [c.served_cpu_ratio for c in checks if c.served_cpu_ratio is not None]
        if served:
            lines.append(f"plan {label}, the model fed each request's served CPU: "
                         f"{sum(abs(r - 1) <= TARGET for r in served)} of {len(served)} within "
                         f"+-15 %")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleets", default=",".join(FLEETS),
                        help=f"comma-separated, of {', '.join(FLEETS)}")
    # under a CPU quota requests cluster a scheduler period (10 ms) apart, by where in it they
    # start: the median of 18 jumped between clusters from one run of a plan to the next
    parser.add_argument("--images", type=int, default=40, help="requests per plan (default 40)")
    parser.add_argument("--rounds", type=int, default=3, help="calibrate's rounds (default 3)")
    parser.add_argument("--work-dir", type=Path, help="keep every file here (default: a "
                                                      "temporary directory)")
    parser.add_argument("--timeline", type=Path, metavar="DIR",
                        help="draw each served plan's timeline here (PNG + CSV)")
    parser.add_argument("--orders", default="plan",
                        help="send orders to serve each plan with: plan, at-once, jackson "
                             "(comma-separated; default plan)")
    parser.add_argument("--nice", type=int, default=-10,
                        help="niceness of the nodes' processes (default -10: on a host shared "
                             "with other jobs they get what their quotas grant; 0: compete)")
    parser.add_argument("--no-refine", dest="refine", action="store_false",
                        help="skip the plan made from figures refined by the new plan's served "
                             "run (`edvit refine`, until the plan is the one served)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    cases = selected_cases("fleet_emulation", args.fleets, args.images)
    if isinstance(cases, int):
        return cases
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="edvit-fleet-"))
    results = []
    for case in cases:
        name = case.name
        profile = announce(case, work)
        result = run_case(case, work / name, profile, PLANNERS,
                          calibrate_rounds=args.rounds, tag=f"{os.getpid() % 10000}{name}",
                          send_orders=tuple(args.orders.split(",")), niceness=args.nice,
                          refine=args.refine)
        results.append(result)
        print(device_table(result))
        print(f"   host load after: {host_load()}; {result.seconds:.0f} s", flush=True)
        if args.timeline:
            from profiler.emulation.timeline import draw_timeline

            for check in result.checks:
                draw_timeline(check, args.timeline / f"{name}-{check.label.replace('/', '-')}.png",
                              f"{name} {check.label}: {fleet_description(case)}")
    print("\n" + summary_table(results))
    print(f"host load: {host_load()}; files in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
