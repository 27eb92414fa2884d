"""Latency: timing with torch.utils.benchmark, the latency model fit, and calibration output."""

from __future__ import annotations

import pytest
import torch
import yaml

from planner.catalog import DeviceKind
from planner.errors import InputError
from planner.vit_shape import ViTShape, counts_for_ratio
from profiler.calibrate import calibrate_host, device_entry_yaml, time_variants
from profiler.latency_model import fit_latency, fit_traffic
from profiler.model_profile import example_input, runnable_backbone
from vit_ops.timing import measure_latency

SHAPE = ViTShape(arch="custom", img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4,
                 head_dim=16, mlp_hidden=256, num_classes=10)


def test_fit_recovers_known_device():
    flops = [3e8, 2.5e9, 9e9]
    latency = [f / 2e10 + 0.004 for f in flops]
    fit = fit_latency(flops, latency)
    assert fit.flops_per_s == pytest.approx(2e10, rel=1e-9)
    assert fit.overhead_s == pytest.approx(0.004, rel=1e-9)
    assert fit.predict_s(5e9) == pytest.approx(5e9 / 2e10 + 0.004)


def test_fit_never_returns_negative_overhead():
    fit = fit_latency([1e9, 2e9], [0.009, 0.021])  # the straight line crosses below zero
    assert fit.overhead_s == 0.0 and fit.flops_per_s > 0
    single = fit_latency([1e9], [0.01])
    assert single.flops_per_s == pytest.approx(1e11) and single.overhead_s == 0.0


def test_traffic_fit_recovers_known_device():
    flops, weight_bytes, depth = [9e9, 3e8, 2.2e9, 1e9], [8.8e7, 2e6, 8.8e7, 5e7], [12, 12, 12, 24]
    latency = [f / 1e11 + b / 1e10 + d * 1e-4 for f, b, d in zip(flops, weight_bytes, depth)]
    fit = fit_traffic(flops, weight_bytes, depth, latency)
    assert fit.flops_per_s == pytest.approx(1e11, rel=1e-6)
    assert fit.weight_bytes_per_s == pytest.approx(1e10, rel=1e-6)
    assert fit.overhead_per_block_s == pytest.approx(1e-4, rel=1e-6)


def test_traffic_fit_drops_a_negative_term():
    flops, weight_bytes, depth = [9e9, 3e8, 2.2e9], [8.8e7, 2e6, 8.8e7], [12, 12, 12]
    latency = [f / 1e11 + 0.002 - b / 1e11 for f, b in zip(flops, weight_bytes)]
    fit = fit_traffic(flops, weight_bytes, depth, latency)
    assert fit.weight_bytes_per_s == float("inf") and fit.overhead_per_block_s > 0


def test_fit_bad_input():
    with pytest.raises(InputError):
        fit_latency([1e9, 2e9], [0.01])
    with pytest.raises(InputError):
        fit_latency([1e9], [0.0])


def test_measure_latency_pins_and_restores_threads():
    model = runnable_backbone(SHAPE, counts_for_ratio(SHAPE, 1.0), random_weights=True)
    before = torch.get_num_threads()
    stats = measure_latency(model, example_input(SHAPE), threads=1, repeats=5, min_block_s=0.01)
    assert torch.get_num_threads() == before
    assert stats.threads == 1 and stats.repeats == 5
    assert 0 < stats.median_s < 1 and stats.iqr_s >= 0


def test_measure_latency_times_any_callable_the_runtime_runs():
    """The runtime times onnxruntime extractors too: callables that are not modules."""
    model = runnable_backbone(SHAPE, counts_for_ratio(SHAPE, 0.5), random_weights=True)
    stats = measure_latency(lambda x: model(x), example_input(SHAPE), threads=1, repeats=3,
                            min_block_s=0.01)
    assert stats.median_s > 0 and stats.repeats == 3


def test_cpu_clock_needs_one_thread():
    model = runnable_backbone(SHAPE, counts_for_ratio(SHAPE, 0.5), random_weights=True)
    stats = measure_latency(model, example_input(SHAPE), threads=1, repeats=3, min_block_s=0.01,
                            clock="cpu")
    assert stats.median_s > 0 and stats.threads == 1
    with pytest.raises(InputError):
        measure_latency(model, example_input(SHAPE), threads=2, clock="cpu")


def test_time_variants_orders_by_size(monkeypatch, tmp_path):
    monkeypatch.setenv("EDVIT_CACHE_DIR", str(tmp_path))
    timed = time_variants([(SHAPE, 1.0), (SHAPE, 0.25)], threads=1, rounds=3,
                          repeats_per_round=3)
    assert [t.ratio for t in timed] == [1.0, 0.25]
    assert timed[0].flops > timed[1].flops
    assert all(t.latency.repeats == 3 and t.latency.threads == 1 for t in timed)


def test_calibration_writes_a_device_kind_the_planner_reads(monkeypatch, tmp_path):
    monkeypatch.setenv("EDVIT_CACHE_DIR", str(tmp_path))
    result = calibrate_host("bench-host", threads=1, link_bytes_per_s=1e8, rounds=2,
                            variants=(("vit_tiny_patch16_224", 64, 1.0),
                                      ("vit_tiny_patch16_224", 64, 0.25),
                                      ("vit_tiny_patch16_224", 32, 0.5)))
    assert len(result.samples) == 3 and result.threads == 1
    assert result.traffic.flops_per_s > 0 and result.traffic.overhead_per_block_s >= 0
    # One device-kind type: what calibrate writes is the catalog's DeviceKind, cost and all.
    assert type(result.device) is DeviceKind
    data = yaml.safe_load(device_entry_yaml(result))
    assert data["name"] == "bench-host" and data["link_bytes_per_s"] == 1e8
    assert set(data) == set(DeviceKind.model_fields)
    priced = DeviceKind.model_validate({**data, "cost_usd": 35, "mem_bytes": "8GiB"})
    assert priced.cost_usd == 35 and priced.mem_bytes == 8 * 2**30
    kind = DeviceKind.model_validate(data)
    assert kind.flops_per_s == pytest.approx(result.traffic.flops_per_s)
    assert kind.overhead_per_block_s == pytest.approx(result.traffic.overhead_per_block_s)
    assert 0 < kind.runtime_overhead_bytes < kind.mem_bytes
