"""`edvit profile` (costs of a ViT's pruned variants), `edvit calibrate` (this machine's figures).

`edvit profile --arch ARCH --num-classes C --ratios 1,0.5,...` writes a profile JSON the planner
reads (`edvit plan --profile`); `--measure` adds host latency. `edvit calibrate` times a few
variants on this machine and writes a device-kind YAML an inventory can include (`kinds:`).
"""

from __future__ import annotations

import argparse

from planner.cli.common import Command, print_json, progress_bar
from planner.errors import InputError
from planner.cli.parser import finite_float, image_size, thread_count
from planner.files import check_output_path, write_json_atomic, write_text_atomic
from planner.profile_schema import DEFAULT_RATIOS
from profiler.cache import ProfileCache
from profiler.calibrate import (
    CALIBRATION_VARIANTS,
    SHARED_MEDIUM_NOTE,
    calibrate_host,
    device_entry_yaml,
    variants_of,
)
from profiler.link import serve_link_peer
from vit_ops.runtime.rendezvous import Endpoint
from profiler.model_profile import profile_model
from vit_ops.shapes import shape_for_arch



def add_profile_arguments(profile: argparse.ArgumentParser) -> None:
    profile.add_argument("--arch", required=True,
                         help="timm architecture, e.g. vit_small_patch16_224")
    profile.add_argument("--num-classes", type=int, required=True, metavar="C")
    default = ",".join(f"{r:g}" for r in DEFAULT_RATIOS)
    profile.add_argument("--ratios", default=default,
                         help=f"comma-separated keep ratios in (0, 1] (default {default})")
    profile.add_argument("--img-size", type=image_size, metavar="N",
                         help="input size (default: arch's)")
    profile.add_argument("--dtype", choices=["fp32", "fp16", "int8"], default="fp32",
                         help="parameter storage type for param_bytes (default fp32)")
    profile.add_argument("--measure", action="store_true",
                         help="also time each variant on this host (torch.utils.benchmark)")
    profile.add_argument("--threads", type=thread_count, help="intra-op threads while timing "
                         "(default: torch's current count)")
    profile.add_argument("--no-cache", action="store_true",
                         help="ignore and do not fill the cache ($EDVIT_CACHE_DIR or "
                              "~/.cache/edvit/profiles)")
    profile.add_argument("--out", metavar="PROFILE.json", help="write the profile here")
    profile.add_argument("--json", action="store_true", help="print the profile JSON on stdout")


def add_calibrate_arguments(calibrate: argparse.ArgumentParser) -> None:
    calibrate.add_argument("--out", metavar="DEVICE.yaml", help="write the device kind here")
    calibrate.add_argument("--name", default=None, help="device kind name (default: host name)")
    calibrate.add_argument("--threads", type=thread_count,
                           help="intra-op threads (default: torch's)")
    calibrate.add_argument("--arch", help="time this model's variants (r = 1, 0.5, 0.25, "
                           "0.125) instead of the three ViT-S ones: the model the fleet will run")
    calibrate.add_argument("--img-size", type=image_size, metavar="N",
                           help="input size of --arch's variants (default: the arch's)")
    calibrate.add_argument("--idle", type=float, metavar="S",
                           help="time single calls, each after S seconds idle, as a fleet's "
                                "requests arrive (default: back-to-back blocks; matters under a "
                                "CPU quota, where a short call runs at full speed)")
    calibrate.add_argument("--rounds", type=int, default=5, metavar="N",
                           help="interleaved timing rounds, >= 2 (default 5)")
    calibrate.add_argument("--clock", choices=["wall", "cpu", "quota"], default="wall",
                           help="wall: elapsed time (default); cpu: the thread's CPU time, for a "
                                "busy machine (needs --threads 1); quota: the CPU time too, and "
                                "the wall time this cgroup's CPU quota grants each CPU time, "
                                "measured (the kind's quota_curve), for a container or emulated "
                                "device (--threads 1)")
    calibrate.add_argument("--input-bytes", type=int, metavar="B",
                           help="calibrating the aggregator, with --link-to: also time "
                                "acknowledged sends of B-byte inputs (their cost beyond the "
                                "bandwidth is written as send_overhead_s, and beside a process "
                                "computing as hosting_send_overhead_s) and requests to a worker "
                                "beside this one (their cost beyond compute as overhead_s); B = "
                                "the plan's input_bytes")
    link = calibrate.add_mutually_exclusive_group()
    link.add_argument("--link-bytes-per-s", type=float, default=None,
                      help="bandwidth to the aggregator, taken as given (default 1.25e7 = "
                           "100 Mbit/s)")
    link.add_argument("--link-to", metavar="HOST:PORT",
                      help="measure the link to the aggregator (or any peer) running "
                           "`edvit calibrate --link-serve HOST:PORT`, over torch.distributed")
    link.add_argument("--link-serve", metavar="HOST:PORT",
                      help="only be the peer that --link-to measures against (normally on the "
                           "aggregator): answer --link-sessions devices, one after another, "
                           "then exit; no calibration")
    calibrate.add_argument("--link-sessions", type=int, default=1, metavar="N",
                           help="devices --link-serve answers before it exits (default 1)")
    calibrate.add_argument("--link-timeout", type=float, default=120.0, metavar="S",
                           help="seconds to wait for the peer (default 120)")
    calibrate.add_argument("--json", action="store_true", help="print the result as JSON")


def link_summary(result) -> str:
    """What calibrate says about the link figure it wrote."""
    link = result.link
    if link is None:
        measured = "given, not measured (--link-to HOST:PORT measures it)"
    else:
        measured = (f"measured to {link.peer}: download {link.download_bytes_per_s:.4g} B/s, "
                    f"upload {link.upload_bytes_per_s:.4g} B/s, round trip "
                    f"{link.round_trip_s * 1e3:.2f} ms; the slower direction is written")
    send = "".join(f"{figure} {s.overhead_s:.4g} ({s.sends} acknowledged sends of {s.bytes:,} B: "
                   f"median {s.median_s * 1e3:.2f} ms against {s.bytes_s * 1e3:.2f} ms for the "
                   "bytes)\n"
                   for figure, s, _ in (link.per_send_costs() if link is not None else []))
    return (f"link_bytes_per_s {result.device.link_bytes_per_s:.4g} ({measured})\n{send}"
            f"note: {SHARED_MEDIUM_NOTE}")


def parse_ratios(text: str) -> list[float]:
    """'1,0.5,0.25' -> [1.0, 0.5, 0.25]; anything else is an InputError on --ratios."""
    ratios = []
    for part in text.split(","):
        try:
            ratios.append(finite_float(part))
        except argparse.ArgumentTypeError:
            raise InputError("not a number", field="--ratios", value=part.strip()) from None
    for ratio in ratios:
        if not 0 < ratio <= 1:
            raise InputError("keep ratio must be in (0, 1]", field="--ratios", value=ratio)
    return ratios


def run_profile(args: argparse.Namespace) -> int:
    ratios = parse_ratios(args.ratios)
    out = check_output_path(args.out) if args.out else None
    shape = shape_for_arch(args.arch, args.num_classes, args.img_size)
    cache = None if args.no_cache else ProfileCache()
    with progress_bar(f"profile {args.arch}", enabled=not args.json) as progress:
        profile = profile_model(shape, ratios, dtype=args.dtype, measure=args.measure,
                                threads=args.threads, cache=cache, progress=progress)
    data = profile.model_dump(mode="json")
    if out is not None:
        write_json_atomic(out, data)
    if args.json:
        print_json(data)
        return 0
    print(f"{'ratio':>6} {'embed':>5} {'heads':>5} {'mlp':>5} {'GFLOPs':>8} {'params':>10} "
          f"{'mem MiB':>8} {'feat B':>7} {'host ms':>9}")
    for v in profile.variants:
        latency = (f"{v.host_latency.median_s * 1e3:>9.2f}" if v.host_latency else f"{'-':>9}")
        print(f"{v.ratio:>6g} {v.counts.embed_dim:>5} {v.counts.heads[0]:>5} "
              f"{v.counts.mlp_hidden[0]:>5} {v.flops / 1e9:>8.3f} {v.params:>10,} "
              f"{v.mem_bytes / 2**20:>8.1f} {v.feat_bytes:>7} {latency}")
    if profile.skipped_ops:
        print("not counted by fvcore (element-wise): "
              + ", ".join(f"{op} x{n}" for op, n in profile.skipped_ops.items()))
    if out is not None:
        print(f"wrote {out}")
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    if args.link_bytes_per_s is not None and args.link_bytes_per_s <= 0:
        raise InputError("must be > 0", field="--link-bytes-per-s", value=args.link_bytes_per_s)
    if args.clock in ("cpu", "quota") and args.threads != 1:
        raise InputError(f"--clock {args.clock} needs --threads 1", field="--threads",
                         value=args.threads)
    if args.input_bytes is not None and not (0 < args.input_bytes <= 2**30 and args.link_to):
        raise InputError("needs --link-to and a size in 1..2^30", field="--input-bytes",
                         value=args.input_bytes)
    if args.idle is not None and not 0 <= args.idle <= 10:
        raise InputError("must be in [0, 10] seconds", field="--idle", value=args.idle)
    if args.img_size is not None and args.arch is None:
        raise InputError("needs --arch", field="--img-size", value=args.img_size)
    if not 2 <= args.rounds <= 1000:
        raise InputError("must be in 2..1000 (a spread needs two)", field="--rounds",
                         value=args.rounds)
    if args.link_sessions < 1:
        raise InputError("must be >= 1", field="--link-sessions", value=args.link_sessions)
    if not args.link_timeout > 0:
        raise InputError("must be > 0", field="--link-timeout", value=args.link_timeout)
    if args.link_serve:
        served = serve_link_peer(Endpoint.parse(args.link_serve, "--link-serve"),
                                 args.link_sessions, args.link_timeout)
        if not args.json:
            print(f"link peer {args.link_serve}: answered {served} device(s)")
        return 0
    peer = Endpoint.parse(args.link_to, "--link-to") if args.link_to else None
    out = check_output_path(args.out) if args.out else None

    variants = CALIBRATION_VARIANTS
    if args.arch:
        shape = shape_for_arch(args.arch, 1000, args.img_size)  # an unknown arch fails here
        variants = variants_of(args.arch, shape.img_size)
    with progress_bar("calibrate", enabled=not args.json) as progress:
        result = calibrate_host(name=args.name, threads=args.threads, clock=args.clock,
                                link_bytes_per_s=args.link_bytes_per_s, link_peer=peer,
                                link_timeout_s=args.link_timeout, rounds=args.rounds,
                                variants=variants, idle_s=args.idle,
                                input_bytes=args.input_bytes, progress=progress)
    if out is not None:
        write_text_atomic(out, device_entry_yaml(result))
    if args.json:
        print_json(result.model_dump(mode="json"))
        return 0
    entry = result.device
    print(f"device {entry.name}: flops_per_s {entry.flops_per_s:.4g}  weight_bytes_per_s "
          f"{entry.weight_bytes_per_s or float('inf'):.4g}  overhead_per_block_s "
          f"{entry.overhead_per_block_s:.4g}  mem_bytes {entry.mem_bytes}  "
          f"runtime_overhead_bytes {entry.runtime_overhead_bytes}  (threads {result.threads}, "
          f"{result.clock} clock)")
    curve = entry.quota_curve is not None
    print(f"{'variant':<24} {'GFLOPs':>8} {'measured ms':>12} {'two-term ms':>11} "
          f"{'traffic ms':>11}" + (f" {'wall ms':>9} {'on curve ms':>11}" if curve else ""))
    for s in result.samples:
        print(f"{s.label:<24} {s.flops / 1e9:>8.3f} {s.latency_s * 1e3:>12.2f} "
              f"{s.predicted_s * 1e3:>11.2f} {s.traffic_predicted_s * 1e3:>11.2f}"
              + (f" {(s.wall_s or float('nan')) * 1e3:>9.2f} {s.curve_wall_s * 1e3:>11.2f}"
                 if curve else ""))
    if curve:
        print(f"quota curve: {len(entry.quota_curve)} points measured (CPU ms -> wall ms): "
              + ", ".join(f"{c * 1e3:.1f}->{w * 1e3:.1f}" for c, w in entry.quota_curve[::4]))
    print(link_summary(result))
    if out is not None:
        print(f"wrote {out}")
    return 0


COMMANDS = {
    "profile": Command(add_profile_arguments, run_profile, description=__doc__.splitlines()[0]),
    "calibrate": Command(
        add_calibrate_arguments, run_calibrate,
        description="Fit latency = flops / flops_per_s + weight_bytes / weight_bytes_per_s + "
                    "depth x overhead_per_block_s on this machine and write a device kind (YAML) "
                    "for an inventory's `kinds:`."),
}
