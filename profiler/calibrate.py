"""`edvit calibrate`: measure this machine's latency figures and write them as a device kind.

Three pruned ViT-S variants are timed here in interleaved rounds (drift and background load hit
every variant alike; a round's time is the median of a few timed blocks, a variant's latency the
median over rounds): r = 1 and r = 0.125 at 224 px (0.3 to 9 GFLOPs) and r = 1 at 112 px (50
tokens: few FLOPs per weight read). The planner's model `latency_s = flops / flops_per_s +
overhead_s` is fitted to the two 224 px variants (the size of the built-in profiles), the traffic
model of `profiler.latency_model` (adds weight-bytes and per-block terms) to all three.

The device kind written carries the traffic model's figures (`flops_per_s`, `weight_bytes_per_s`,
`overhead_per_block_s`, with `overhead_s` 0), which the planner evaluates and which predicts
held-out variants of other sizes far better than the two-term model (benchmarks/profiler_bench.py);
the machine's memory (`mem_bytes`: physical memory, or the memory limit of this process's cgroup
when lower), the resident memory of Python + torch before any model is built
(`runtime_overhead_bytes`) and the link bandwidth to the aggregator (`link_bytes_per_s`): measured
against a peer over torch.distributed when one is given (`profiler.link`), else taken from the
caller. Under a CPU quota (`--clock quota`) the figures are CPU time and the kind also carries
the quota as measured here, wall time against CPU time (`quota_curve`, `profiler.quota`), which
the planner reads compute time off. The two-term fit and the data are YAML comments (and
`--json`).
"""

from __future__ import annotations

import math
import os
import platform
import random
import resource
import statistics
from typing import Literal

import yaml
from pydantic import Field

from planner.catalog import DeviceKind
from planner.profile_schema import LatencyStats
from planner.progress import ProgressCallback
from planner.schema_base import StrictModel
from planner.vit_shape import ViTShape, counts_for_ratio
from profiler.cache import ProfileCache
from profiler.latency_model import LatencyFit, TrafficFit, fit_latency, fit_traffic
from profiler.link import (
    HandoffMeasurement,
    LinkMeasurement,
    measure_link,
    measure_local_handoff,
)
from profiler.model_profile import (
    example_input,
    host_description,
    profile_model,
    runnable_backbone,
    tool_versions,
)
from vit_ops.shapes import shape_for_arch
from planner.quota_curve import wall_on_curve
from profiler.quota import measure_quota_curve, own_cpu_quota
from vit_ops.timing import (
    calls_after_idle,
    default_threads,
    latency_stats,
    measure_latency,
)

CalibrationClock = Literal["wall", "cpu", "quota"]
HANDOFF_SPIN_S = 0.02  # a sub-model's CPU in the hand-off measurement without a quota
CURVE_IDLE_S = 0.03  # idle before each spin of the quota curve, when calls are not after idle

# (arch, img_size, ratio). The 224 px pair spans 0.3 to 9 GFLOPs, the range the planner chooses
# from on small devices; the 112 px one separates weight traffic from arithmetic.
DEFAULT_LINK_BYTES_PER_S = 1.25e7  # 100 Mbit/s, when the link is neither given nor measured
SHARED_MEDIUM_NOTE = (
    "the aggregator's own link is the shared medium: every request's input goes out over it to "
    "each device that hosts a sub-model, one device after another, at min(aggregator link, device "
    "link); measure each device's link to the aggregator one device at a time, and give the "
    "aggregator's kind its own link figure")
MODEL_RATIOS = (1.0, 0.5, 0.25, 0.125)  # the variants of one model, `variants_of`


def variants_of(arch: str, img_size: int) -> tuple[tuple[str, int, float], ...]:
    """Calibration variants of the model a fleet will run, at its input size: figures fitted on
    them predict its sub-models, whose sizes they span, without extrapolating."""
    return tuple((arch, img_size, ratio) for ratio in MODEL_RATIOS)


CALIBRATION_VARIANTS: tuple[tuple[str, int, float], ...] = (
    ("vit_small_patch16_224", 224, 1.0),
    ("vit_small_patch16_224", 224, 0.125),
    ("vit_small_patch16_224", 112, 1.0),
)


class TimedVariant(StrictModel):
    label: str
    arch: str
    img_size: int
    ratio: float
    depth: int
    flops: int
    weight_bytes: int = Field(description="fp32 parameter bytes, read once per inference")
    latency: LatencyStats
    wall_median_s: float | None = Field(
        default=None, description="median of the wall times measured beside (clock quota)")

    @property
    def latency_s(self) -> float:
        return self.latency.median_s


class CalibrationSample(StrictModel):
    label: str
    img_size: int
    flops: int
    weight_bytes: int
    latency_s: float
    iqr_s: float
    predicted_s: float = Field(description="by the two-term model (flops + constant)")
    traffic_predicted_s: float = Field(description="by the traffic model (the device kind's)")
    wall_s: float | None = Field(default=None, description="median wall time measured beside "
                                                            "(CPU clocks, calls after idle)")
    curve_wall_s: float | None = Field(
        default=None, description="the traffic model's figure on the quota curve: the wall "
                                  "time the planner predicts (clock quota, under a quota)")


class TrafficFigures(StrictModel):
    """The traffic model's figures (see profiler.latency_model); inf = term dropped by the fit."""

    flops_per_s: float
    weight_bytes_per_s: float
    overhead_per_block_s: float


class CalibrationResult(StrictModel):
    device: DeviceKind
    timed: list[TimedVariant] = Field(default_factory=list)
    traffic: TrafficFigures
    threads: int
    clock: str
    rounds: int
    samples: list[CalibrationSample]
    link: LinkMeasurement | None = Field(default=None, description="when measured (--link-to)")
    handoff: HandoffMeasurement | None = Field(
        default=None, description="requests to a worker beside this one (with input_bytes): "
                                  "its cost beyond compute is the kind's overhead_s")
    host: dict[str, str]
    tool_versions: dict[str, str]


def _variant_costs(shape: ViTShape, ratio: float) -> tuple[int, int]:
    """(FLOPs, fp32 parameter bytes) of one variant from the (cached) profiler."""
    variant = profile_model(shape, [ratio], cache=ProfileCache()).variants[0]
    return variant.flops, variant.param_bytes


def time_variants(variants: list[tuple[ViTShape, float]], *, threads: int | None = None,
                  rounds: int = 5, repeats_per_round: int = 3, clock: CalibrationClock = "wall",
                  idle_s: float | None = None,
                  progress: ProgressCallback | None = None) -> list[TimedVariant]:
    """Latency of each (shape, ratio) on this machine, measured in interleaved rounds: in
    back-to-back blocks, or (`idle_s`) as single calls each after `idle_s` idle, like requests.

    `clock="cpu"` and `clock="quota"` (one thread) time each call's CPU time, which a loaded
    host does not inflate; under a CPU quota that is the figure `quota_curve` turns into the
    wall time the quota grants (`calibrate_host` measures the curve)."""
    threads = threads or default_threads()
    quota = own_cpu_quota()
    rng = random.Random(0)
    built = []
    for shape, ratio in variants:
        model = runnable_backbone(shape, counts_for_ratio(shape, ratio), random_weights=True)
        built.append((shape, ratio, model, example_input(shape), _variant_costs(shape, ratio)))
    per_round: list[list[float]] = [[] for _ in built]
    walls: list[list[float]] = [[] for _ in built]
    total = rounds * len(built)
    for r in range(rounds):
        for i, (shape, ratio, model, image, _) in enumerate(built):
            warmup = 2 if r == 0 else 1
            if idle_s is None:
                stats = measure_latency(model, image, threads=threads, repeats=repeats_per_round,
                                        warmup=warmup, clock="wall" if clock == "wall" else "cpu")
                per_round[i].append(stats.median_s)
            else:
                pairs = calls_after_idle(model, image, threads=threads, calls=repeats_per_round,
                                         idle_s=idle_s, warmup=warmup, rng=rng,
                                         jitter_s=quota.period_s if quota is not None else 0.0)
                walls[i].extend(wall for wall, _ in pairs)
                per_round[i].append(statistics.median(
                    wall if clock == "wall" else cpu for wall, cpu in pairs))
            if progress is not None:
                progress(r * len(built) + i + 1, total, f"{shape.arch} r={ratio:g}")
    timed = []
    for (shape, ratio, _, _, (flops, weight_bytes)), times, wall in zip(built, per_round, walls):
        timed.append(TimedVariant(
            label=_label(shape, ratio), arch=shape.arch, img_size=shape.img_size, ratio=ratio,
            depth=shape.depth, flops=flops, weight_bytes=weight_bytes,
            latency=latency_stats(times, threads),
            wall_median_s=statistics.median(wall) if wall and clock != "wall" else None))
    return timed


def fit_two_term_model(timed: list[TimedVariant]) -> LatencyFit:
    """The planner's two figures, fitted on the variants at the first one's input size.

    The planner's model has no term for the token count, so it is fitted at one input size (224 px
    for the default variants, the size of the built-in profiles).
    """
    chosen = [t for t in timed if t.img_size == timed[0].img_size]
    return fit_latency([t.flops for t in chosen], [t.latency_s for t in chosen])


def fit_traffic_model(timed: list[TimedVariant]) -> TrafficFit:
    """The traffic model; on variants of one model at one size (`variants_of`), where FLOPs and
    weight bytes grow together and the fit cannot tell them apart, FLOPs plus a per-block cost."""
    if len({(t.arch, t.img_size) for t in timed}) > 1:
        return fit_traffic([t.flops for t in timed], [t.weight_bytes for t in timed],
                           [t.depth for t in timed], [t.latency_s for t in timed])
    two_term = fit_latency([t.flops for t in timed], [t.latency_s for t in timed])
    return TrafficFit(flops_per_s=two_term.flops_per_s, weight_bytes_per_s=math.inf,
                      overhead_per_block_s=two_term.overhead_s / timed[0].depth)


def _kind_name(name: str) -> str:
    """The device kind's name, checked as `DeviceKind` will (a name, never a path)."""
    from pydantic import TypeAdapter, ValidationError

    from planner.errors import InputError
    from planner.limits import Name

    try:
        return TypeAdapter(Name).validate_python(name)
    except ValidationError:
        raise InputError("a device kind name is 1-128 characters of A-Za-z0-9_.+- starting with "
                         "a letter or digit", field="--name", value=name) from None


def calibrate_host(name: str | None = None, *, threads: int | None = None,
                   link_bytes_per_s: float | None = None, link_peer=None,
                   link_timeout_s: float = 120.0,
                   variants: tuple[tuple[str, int, float], ...] = CALIBRATION_VARIANTS,
                   rounds: int = 5, clock: CalibrationClock = "wall",
                   idle_s: float | None = None, input_bytes: int | None = None,
                   progress: ProgressCallback | None = None) -> CalibrationResult:
    """Time `variants` here, fit the latency models, describe this machine as a device kind.

    `clock="cpu"` (one thread only) times the thread's CPU time: use it on a busy machine.
    `clock="quota"` does too, and under a CPU quota also measures the wall time the quota grants
    each CPU time (`profiler.quota.measure_quota_curve`), written as the kind's `quota_curve`.
    `link_peer` (a `vit_ops.runtime.Endpoint` running `serve_link_peer`) measures the link first;
    otherwise `link_bytes_per_s` (default DEFAULT_LINK_BYTES_PER_S) is written as given. With a
    peer and `input_bytes`, acknowledged sends of inputs of that size are timed too, as the
    aggregator sends them, and their cost beyond bytes / bandwidth is written as
    `send_overhead_s` (what this machine, as the aggregator, pays per device sent to).
    """
    name = _kind_name(name if name is not None else platform.node() or "this-host")  # before timing
    runtime_bytes = resident_bytes()  # before any model exists: Python + torch + libraries
    link = (measure_link(link_peer, timeout_s=link_timeout_s, send_bytes=input_bytes)
            if link_peer is not None else None)
    if link is not None:
        link_bytes_per_s = link.link_bytes_per_s
    elif link_bytes_per_s is None:
        link_bytes_per_s = DEFAULT_LINK_BYTES_PER_S
    threads = threads or default_threads()
    shapes = [(shape_for_arch(arch, 1000, img_size=img), ratio) for arch, img, ratio in variants]
    timed = time_variants(shapes, threads=threads, rounds=rounds, clock=clock, idle_s=idle_s,
                          progress=progress)
    quota = own_cpu_quota()
    quota_text = f", CPU quota {quota.cores:.2f} core" if quota is not None else ""
    curve = None
    if clock == "quota" and quota is not None:
        curve = measure_quota_curve(max(t.latency_s for t in timed), quota,
                                    idle_s=idle_s if idle_s is not None else CURVE_IDLE_S,
                                    progress=progress)
    handoff = None
    if input_bytes:  # as the aggregator: what a request to its own worker costs beyond compute
        spin = 3 * quota.quota_s if quota is not None else HANDOFF_SPIN_S
        spin_wall = wall_on_curve(curve, spin)
        handoff = measure_local_handoff(input_bytes, spin, spin_wall, timeout_s=link_timeout_s)
    fit = fit_two_term_model(timed)
    traffic = fit_traffic_model(timed)
    host = host_description(threads)
    entry = DeviceKind(
        name=name,
        description=(f"calibrated: {host['cpu']}, {threads} thread(s), {clock} clock{quota_text}"
                     f"{f', requests after {idle_s:g} s idle' if idle_s is not None else ''}, "
                     f"torch {host['torch']}"),
        mem_bytes=memory_limit_bytes(), runtime_overhead_bytes=runtime_bytes,
        flops_per_s=traffic.flops_per_s,
        overhead_s=handoff.overhead_s if handoff is not None else 0.0,
        weight_bytes_per_s=(traffic.weight_bytes_per_s
                            if math.isfinite(traffic.weight_bytes_per_s) else None),
        overhead_per_block_s=traffic.overhead_per_block_s,
        link_bytes_per_s=link_bytes_per_s, quota_curve=curve,
        **{figure: send.overhead_s for figure, send, _ in (link.per_send_costs() if link else [])})
    samples = [CalibrationSample(
        label=t.label, img_size=t.img_size, flops=t.flops, weight_bytes=t.weight_bytes,
        latency_s=t.latency_s,
        iqr_s=t.latency.iqr_s, predicted_s=fit.predict_s(t.flops),
        traffic_predicted_s=traffic.predict_s(t.flops, t.weight_bytes, t.depth),
        wall_s=t.wall_median_s,
        curve_wall_s=(wall_on_curve(curve, traffic.predict_s(t.flops, t.weight_bytes, t.depth))
                      if curve else None))
        for t in timed]
    return CalibrationResult(
        device=entry, timed=timed, handoff=handoff, threads=threads, clock=clock, rounds=rounds, samples=samples,
        host=host,
        link=link,
        tool_versions=tool_versions(),
        traffic=TrafficFigures(flops_per_s=traffic.flops_per_s,
                               weight_bytes_per_s=traffic.weight_bytes_per_s,
                               overhead_per_block_s=traffic.overhead_per_block_s))


def device_entry_yaml(result: CalibrationResult) -> str:
    """The device kind as YAML, with the calibration data as comments."""
    lines = ["# Device kind written by `edvit calibrate`; include it in an inventory with",
             "#   kinds: {MY_KIND: {file: THIS_FILE}}",
             "# latency_s = flops / flops_per_s + weight_bytes / weight_bytes_per_s",
             "#             + depth * overhead_per_block_s  (the traffic model, fitted on all",
             "# variants below; the two-term model flops / flops_per_s + overhead_s, fitted on the",
             f"# {result.samples[0].img_size} px variants, is shown for comparison)"]
    walls = all(s.wall_s is not None for s in result.samples)
    curve = result.device.quota_curve
    lines.append("# variant                       flops      weight bytes   measured ms  "
                 "two-term ms   traffic ms" + ("      wall ms" if walls else "")
                 + ("  on curve ms" if curve else ""))
    for s in result.samples:
        lines.append(f"#   {s.label:<24} {s.flops:>13,} {s.weight_bytes:>13,} "
                     f"{s.latency_s * 1e3:>12.3f} {s.predicted_s * 1e3:>12.3f} "
                     f"{s.traffic_predicted_s * 1e3:>12.3f}"
                     + (f" {s.wall_s * 1e3:>12.3f}" if walls else "")
                     + (f" {s.curve_wall_s * 1e3:>12.3f}" if curve else ""))
    if walls:
        lines.append(f"# measured ms: the {result.clock} clock's figure (CPU time); wall ms: the "
                     "wall time measured beside it")
    if curve:
        lines.append(f"# quota_curve: {len(curve)} points, wall time of spins of {curve[0][0] * 1e3:.2f}"
                     f"-{curve[-1][0] * 1e3:.1f} ms of CPU after idle (medians); the planner reads "
                     "compute time off it")
    link = result.link
    how = ("given, not measured" if link is None else
           f"measured to {link.peer} (download {link.download_bytes_per_s:.4g}, upload "
           f"{link.upload_bytes_per_s:.4g} B/s; the slower is written)")
    for figure, send, how in link.per_send_costs() if link is not None else []:
        lines.append(f"# {figure}: {send.sends} acknowledged sends of {send.bytes:,} B in "
                     f"bursts of {send.burst}, {how}: median {send.median_s * 1e3:.2f} ms, p90 "
                     f"{send.p90_s * 1e3:.2f} ms, against {send.bytes_s * 1e3:.2f} ms for the "
                     "bytes at the upload rate")
    if result.handoff is not None:
        h = result.handoff
        spun = (f", {h.spin_measured_s * 1e3:.1f} ms as the worker timed it"
                if h.spin_measured_s is not None else "")
        lines.append(f"# overhead_s: {h.requests} requests to a worker beside this one "
                     f"({h.bytes:,} B in, {h.spin_cpu_s * 1e3:.1f} ms of CPU spun, "
                     f"{h.spin_wall_s * 1e3:.1f} ms by the quota{spun}): median "
                     f"{h.median_s * 1e3:.2f} ms, less each request's own spin "
                     f"{h.overhead_s * 1e3:.2f} ms; the rest is per sub-model here")
    lines.append(f"# threads {result.threads}, {result.clock} clock, rounds {result.rounds}, torch "
                 f"{result.tool_versions.get('torch')}; link_bytes_per_s {how}")
    lines.append("# " + SHARED_MEDIUM_NOTE.replace("; ", ";\n# "))
    body = yaml.safe_dump(result.device.model_dump(mode="json"), sort_keys=False)
    return "\n".join(lines) + "\n" + body


def physical_memory_bytes() -> int:
    """Total physical memory of this machine."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1


def memory_limit_bytes() -> int:
    """Memory this process may use: physical memory, or its cgroup's limit when lower (a container
    or an emulated device is its limit, not the host it runs on)."""
    limit = physical_memory_bytes()
    for path in _cgroup_memory_limit_files():
        try:
            text = open(path, encoding="ascii").read().strip()
        except OSError:
            continue
        if text.isdigit():
            limit = min(limit, int(text))
    return limit


def _cgroup_memory_limit_files() -> list[str]:
    """memory.max (v2) / memory.limit_in_bytes (v1) of this process's own cgroups."""
    files = []
    try:
        lines = open("/proc/self/cgroup", encoding="ascii").read().splitlines()
    except OSError:
        return files
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            files.append(f"/sys/fs/cgroup{path.rstrip('/')}/memory.max")
        elif "memory" in controllers.split(","):
            files.append(f"/sys/fs/cgroup/memory{path.rstrip('/')}/memory.limit_in_bytes")
    return files


def resident_bytes() -> int:
    """Resident memory of this process now (Linux), else its peak so far."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if platform.system() == "Darwin" else peak * 1024


def _label(shape: ViTShape, ratio: float) -> str:
    name = shape.arch.removesuffix("_patch16_224")
    size = "" if shape.img_size == 224 else f"@{shape.img_size}"
    return f"{name}{size} r={ratio:g}"
