"""profiler.model_profile: variant fields, dtypes, the disk cache, schema round trip, built-ins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import profiler.model_profile as model_profile
from planner.errors import InputError
from planner.profile_schema import DEFAULT_RATIOS, ModelProfile
from planner.profiles import BUILTIN_DIR, load_profile
from planner.vit_shape import ViTShape, counts_for_ratio
from profiler.analytic import backbone_params
from profiler.builtin import builtin_profile_for
from profiler.cache import CACHE_ENV, ProfileCache, default_cache_dir
from profiler.model_profile import profile_model

SHAPE = ViTShape(arch="custom", img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4,
                 head_dim=16, mlp_hidden=256, num_classes=10)


def test_variant_fields():
    profile = profile_model(SHAPE, [1.0, 0.5], cache=None)
    for variant in profile.variants:
        counts = counts_for_ratio(SHAPE, variant.ratio)
        assert variant.counts == counts
        assert variant.params == backbone_params(SHAPE, counts)
        assert variant.flops == 2 * variant.macs
        assert variant.param_bytes == 4 * variant.params
        assert variant.feat_bytes == 4 * counts.embed_dim
        assert variant.act_bytes > 4 * 3 * 32 * 32  # at least the input image
        assert variant.host_latency is None
    big, small = profile.variants
    assert big.macs > small.macs and big.act_bytes > small.act_bytes
    assert profile.skipped_ops == {"aten::add": 2 * SHAPE.depth + 1, "aten::gelu": SHAPE.depth}
    assert {"torch", "timm", "fvcore"} <= set(profile.tool_versions)


def test_fp16_halves_bytes_int8_quarters_weights():
    fp32 = profile_model(SHAPE, [0.5], cache=None).variants[0]
    fp16 = profile_model(SHAPE, [0.5], dtype="fp16", cache=None).variants[0]
    int8 = profile_model(SHAPE, [0.5], dtype="int8", cache=None).variants[0]
    assert fp16.param_bytes * 2 == fp32.param_bytes == int8.param_bytes * 4
    assert fp16.act_bytes == fp32.act_bytes // 2 and int8.act_bytes == fp32.act_bytes
    assert fp16.flops == fp32.flops


@pytest.mark.parametrize("ratios", [[0.0], [1.5], [-0.5], [0.5, 0.5], []])
def test_bad_ratios(ratios):
    with pytest.raises(InputError) as err:
        profile_model(SHAPE, ratios, cache=None)
    assert err.value.field == "ratios"


def test_cache_hit_and_miss(tmp_path, monkeypatch):
    cache = ProfileCache(tmp_path)
    first = profile_model(SHAPE, [1.0, 0.25], cache=cache)
    assert (cache.hits, cache.misses) == (0, 2)
    assert len(list(tmp_path.glob("*.json"))) == 2

    def must_not_run(*args, **kwargs):
        raise AssertionError("a cached variant was recomputed")

    monkeypatch.setattr(model_profile, "profile_variant", must_not_run)
    second = profile_model(SHAPE, [0.25, 1.0], cache=cache)
    assert (cache.hits, cache.misses) == (2, 2)
    assert second.variants == first.variants[::-1]
    monkeypatch.undo()

    profile_model(SHAPE, [1.0], dtype="fp16", cache=cache)            # dtype is in the key
    profile_model(SHAPE.model_copy(update={"img_size": 16}), [1.0], cache=cache)  # and the shape
    assert cache.misses == 4


def test_bad_cache_entries_are_recomputed(tmp_path):
    cache = ProfileCache(tmp_path)
    first = profile_model(SHAPE, [1.0, 0.25], cache=cache)
    unreadable, malformed = sorted(tmp_path.glob("*.json"))
    unreadable.write_text("{not json")
    malformed.write_text('{"variant": {"ratio": 2}}')
    assert profile_model(SHAPE, [1.0, 0.25], cache=cache).variants == first.variants
    third = ProfileCache(tmp_path)
    profile_model(SHAPE, [1.0, 0.25], cache=third)
    assert (third.hits, third.misses) == (2, 0)


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    assert ProfileCache().directory == tmp_path / "c"
    monkeypatch.delenv(CACHE_ENV)
    assert default_cache_dir() == Path.home() / ".cache" / "edvit" / "profiles"


def test_measured_variant_records_latency_and_host(tmp_path):
    cache = ProfileCache(tmp_path)
    profile = profile_model(SHAPE, [0.5], measure=True, threads=1, cache=cache)
    latency = profile.variants[0].host_latency
    assert latency is not None and latency.median_s > 0 and latency.threads == 1
    assert profile.host["threads"] == "1" and profile.host["cpu"]
    profile_model(SHAPE, [0.5], cache=cache)  # unmeasured is a different entry
    assert (cache.hits, cache.misses) == (0, 2)


def test_progress_callback():
    calls = []
    profile_model(SHAPE, [1.0, 0.5, 0.25], cache=None,
                  progress=lambda done, total, label: calls.append((done, total, label)))
    assert calls == [(1, 3, "r=1"), (2, 3, "r=0.5"), (3, 3, "r=0.25")]


def test_schema_round_trip(tmp_path):
    profile = profile_model(SHAPE, [1.0, 0.5], cache=None)
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile.model_dump(mode="json")))
    assert load_profile(path) == profile
    assert ModelProfile.model_validate_json(profile.model_dump_json()) == profile


def test_shipped_tiny_profile_is_current():
    shipped = load_profile(BUILTIN_DIR / "vit_tiny_patch16_224.json")
    fresh = builtin_profile_for("vit_tiny_patch16_224")
    assert shipped.model_dump(exclude={"tool_versions"}) == \
        fresh.model_dump(exclude={"tool_versions"})


@pytest.mark.parametrize("arch,published_gmacs", [
    ("vit_tiny_patch16_224", 1.26), ("vit_small_patch16_224", 4.6),
    ("vit_base_patch16_224", 17.6), ("vit_large_patch16_224", 61.6)])
def test_shipped_profiles_match_timm_published(arch, published_gmacs):
    profile = load_profile(BUILTIN_DIR / f"{arch}.json")
    assert [v.ratio for v in profile.variants] == list(DEFAULT_RATIOS)
    assert profile.shape.arch == arch and profile.shape.num_classes == 1000
    full = profile.variant(1.0)
    assert full.macs / 1e9 == pytest.approx(published_gmacs, rel=0.02)
    flops = [v.flops for v in profile.variants]
    assert flops == sorted(flops, reverse=True)
