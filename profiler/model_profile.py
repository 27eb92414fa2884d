"""Profile the pruned variants of a ViT: counts, MACs/FLOPs, memory and (optionally) host latency.

`profile_model(shape, ratios)` returns a `planner.profile_schema.ModelProfile`, one variant per keep
ratio, each built with `planner.vit_shape.counts_for_ratio` (the one ratio -> counts rule) and
`vit_ops.architecture.build_vit`. What a variant is: the backbone a device runs, i.e. the pruned ViT
up to its pooled feature vector (no classifier head; the class decision is the aggregator's fusion
MLP). All figures are for one image (batch 1):

- `macs` from fvcore with the SDPA handle (`profiler.flops`); `flops = 2 x macs`.
- `params`, `param_bytes = params x bytes(dtype)` (fp32 4, fp16 2, int8 1).
- `act_bytes` = peak bytes of intermediate tensors (`profiler.memory`) + the input image, in fp32;
  halved for fp16; int8 (dynamic quantisation) keeps fp32 activations.
- `mem_bytes = param_bytes + act_bytes` (the runtime's own footprint is a device property).
- `feat_bytes = counts.embed_dim x 4`: the fp32 pooled feature vector sent to the aggregator.
- `host_latency` (with `measure_latency=True`): median/IQR on this host (`vit_ops.timing`).

Each variant is cached on disk (`profiler.cache`). The weights are random: no figure here depends
on their values.
"""

from __future__ import annotations

import logging
import platform
from importlib import metadata
from typing import Iterable

import torch

from planner.errors import InputError
from planner.profile_schema import ModelProfile, VariantProfile, same_ratio
from planner.progress import ProgressCallback
from planner.vit_shape import PruneCounts, ViTShape, counts_for_ratio
from profiler.cache import ProfileCache, cache_key
from profiler.flops import count_macs
from profiler.memory import BYTES_PER_ELEMENT, Dtype, param_bytes, peak_activation_bytes
from vit_ops.architecture import build_vit
from vit_ops.timing import default_threads, measure_latency

logger = logging.getLogger(__name__)

# Bump when a measurement method changes: it is part of every cache key.
PROFILER_METHOD_VERSION = 1
FEATURE_BYTES_PER_ELEMENT = 4  # features travel as fp32


def check_ratios(ratios: Iterable[float]) -> list[float]:
    """Keep ratios as a list, each in (0, 1] and unique; `InputError` otherwise."""
    checked: list[float] = []
    for ratio in ratios:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
            raise InputError("keep ratio must be in (0, 1]", field="ratios", value=ratio)
        if any(same_ratio(ratio, seen) for seen in checked):
            raise InputError("keep ratio listed twice", field="ratios", value=ratio)
        checked.append(float(ratio))
    if not checked:
        raise InputError("no keep ratios given", field="ratios", value=[])
    return checked


def tool_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour the figures depend on."""
    versions = {"edvit_profiler_method": str(PROFILER_METHOD_VERSION)}
    for package in ("torch", "timm", "fvcore"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return versions


def host_description(threads: int) -> dict[str, str]:
    """Where latency was measured: machine, CPU model, pinned thread count."""
    return {"node": platform.node(), "machine": platform.machine(), "cpu": _cpu_model(),
            "system": platform.system(), "threads": str(threads),
            "torch": torch.__version__}


def runnable_backbone(shape: ViTShape, counts: PruneCounts, *, random_weights: bool = False,
                      seed: int = 0) -> torch.nn.Module:
    """The pruned backbone (no head) on CPU, in eval mode.

    Weights are zeros (counting FLOPs and memory does not read them; zero-filling is a memset) or,
    for timing, seeded normal(0, 0.02) values; both are far faster than timm's truncated-normal
    init on CPU for ViT-B/L sizes.
    """
    model = build_vit(shape, counts, num_classes=0, device="meta")
    model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if random_weights:
                param.normal_(0.0, 0.02, generator=generator)
            else:
                param.zero_()
    return model.eval()


def example_input(shape: ViTShape, seed: int = 0) -> torch.Tensor:
    """One fp32 image of the model's size, batch 1."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, shape.in_chans, shape.img_size, shape.img_size, generator=generator)


def profile_variant(shape: ViTShape, ratio: float, counts: PruneCounts, *, dtype: Dtype = "fp32",
                    measure: bool = False, threads: int | None = None
                    ) -> tuple[VariantProfile, dict[str, int]]:
    """One variant's costs, and the ops fvcore could not count in it (op -> occurrences)."""
    model = runnable_backbone(shape, counts, random_weights=measure)
    image = example_input(shape)
    mac_count = count_macs(model, image)
    params = sum(p.numel() for p in model.parameters())
    act_fp32 = peak_activation_bytes(model, image) + image.numel() * image.element_size()
    act = act_fp32 // 2 if dtype == "fp16" else act_fp32
    weights = param_bytes(params, dtype)
    latency = measure_latency(model, image, threads=threads) if measure else None
    variant = VariantProfile(
        ratio=ratio, counts=counts, params=params, macs=mac_count.macs,
        flops=mac_count.flops, param_bytes=weights, act_bytes=act,
        mem_bytes=weights + act, feat_bytes=counts.embed_dim * FEATURE_BYTES_PER_ELEMENT,
        host_latency=latency)
    return variant, mac_count.skipped_ops


def profile_model(shape: ViTShape, ratios: Iterable[float], *, dtype: Dtype = "fp32",
                  measure: bool = False, threads: int | None = None,
                  cache: ProfileCache | None = None,
                  progress: ProgressCallback | None = None) -> ModelProfile:
    """Profile every keep ratio of `shape` (see the module docstring for what is measured).

    `cache=None` disables caching. `threads` pins the intra-op threads for timing (default:
    torch's current count). `progress(done, total, label)` is called after each variant.
    """
    if dtype not in BYTES_PER_ELEMENT:
        raise InputError(f"dtype must be one of {sorted(BYTES_PER_ELEMENT)}", field="dtype",
                         value=dtype)
    ratios = check_ratios(ratios)
    threads = (threads or default_threads()) if measure else None
    versions = tool_versions()
    host = host_description(threads) if measure else {}
    variants: list[VariantProfile] = []
    skipped: dict[str, int] = {}
    for done, ratio in enumerate(ratios):
        counts = counts_for_ratio(shape, ratio)
        key = cache_key({"shape": shape.model_dump(mode="json"),
                         "counts": counts.model_dump(mode="json"), "ratio": ratio,
                         "dtype": dtype, "batch": 1, "versions": versions,
                         "latency": {"host": host} if measure else None})
        cached = _from_cache(cache, key) if cache is not None else None
        if cached is not None:
            variant, variant_skipped = cached
        else:
            variant, variant_skipped = profile_variant(shape, ratio, counts, dtype=dtype,
                                                       measure=measure, threads=threads)
            if cache is not None:
                cache.put(key, {"variant": variant.model_dump(mode="json"),
                                "skipped_ops": variant_skipped})
        for op, n in variant_skipped.items():
            skipped[op] = max(skipped.get(op, 0), int(n))
        variants.append(variant)
        if progress is not None:
            progress(done + 1, len(ratios), f"r={ratio:g}")
    return ModelProfile(shape=shape, dtype=dtype, variants=variants,
                        skipped_ops=dict(sorted(skipped.items())), tool_versions=versions,
                        host=host)


def _from_cache(cache: ProfileCache, key: str) -> tuple[VariantProfile, dict[str, int]] | None:
    """A cached (variant, skipped ops), or None when absent or not in today's format."""
    entry = cache.get(key)
    if entry is None:
        return None
    try:
        variant = VariantProfile.model_validate(entry["variant"])
        skipped = {str(op): int(n) for op, n in dict(entry["skipped_ops"]).items()}
    except (KeyError, TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        logger.warning("ignoring cache entry %s (%s)", key, exc.__class__.__name__)
        return None
    return variant, skipped


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
