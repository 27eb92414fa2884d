"""The distributed runtime: same predictions as one process, failures named in time, no leftovers.

Stand-in deployments (small seeded torch modules, with faults injected inside a worker process:
SIGKILL, SIGSTOP, a load that never ends or fails) exercise the runtime itself; a tiny real
digits deployment from `vit_ops.materialize` exercises the CLI, `edvit worker` and the adapter.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from planner.cli import main as cli_main
from vit_ops.data import normalize_pixels
from vit_ops.runtime import (FeatureSlot, RuntimeConfig, WorkerFailedError, predict_fused,
                             serve_local)

pytestmark = pytest.mark.slow  # starts fleets of worker processes

FAULT_TIMEOUT_S = 2.0  # for answers; joining gets JOIN_TIMEOUT_S (loading is slow on a busy host)
JOIN_TIMEOUT_S = 30.0
NEVER_JOIN_TIMEOUT_S = 5.0
SLACK_S = 2.5  # scheduling slack on a loaded 2-core machine


# ------------------------------------------------------------------ stand-in deployments

class _Fault(nn.Module):
    """Wraps a device's extractor; on forward call `at + 1` (call 1 is the load check) it records
    the time in `stamp` and kills (`die`) or stops (`hang`) its own process."""

    def __init__(self, inner: nn.Module, kind: str, at: int, stamp: str) -> None:
        super().__init__()
        self.inner, self.kind, self.at, self.stamp, self.calls = inner, kind, at, stamp, 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.at + 1:
            Path(self.stamp).write_text(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL if self.kind == "die" else signal.SIGSTOP)
        return self.inner(images)


class _Concat(nn.Module):
    def __init__(self, parts: list[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(images) for p in self.parts], dim=-1)


class StandIn:
    """Four seeded feature extractors on three devices (device "a" hosts slots 0 and 2, so its
    features fill two separate column ranges) and a seeded fusion MLP over 10 classes."""

    name = "stand-in"
    devices = ["a", "b", "a", "c"]
    widths = [8, 6, 5, 4]

    def __init__(self, fault: tuple[str, str, int, str] | None = None) -> None:
        self.fault = fault  # (device, kind, at, stamp file)

    def slots(self) -> list[FeatureSlot]:
        return [FeatureSlot(device=d, name=f"s{i}", width=w)
                for i, (d, w) in enumerate(zip(self.devices, self.widths))]

    def load_worker(self, device: str) -> nn.Module:
        parts = []
        for i, d in enumerate(self.devices):
            if d == device:
                torch.manual_seed(100 + i)
                parts.append(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, self.widths[i]),
                                           nn.Tanh()))
        model = _Concat(parts).eval()
        if self.fault and self.fault[0] == device:
            _, kind, at, stamp = self.fault
            if kind == "never_join":
                time.sleep(600)
            if kind == "load_error":
                raise FileNotFoundError("model.safetensors")
            if kind == "die_on_load":  # killed while the fleet joins
                os.kill(os.getpid(), signal.SIGKILL)
            model = _Fault(model, kind, at, stamp)
        return model

    def load_fusion(self) -> nn.Module:
        torch.manual_seed(7)
        return nn.Sequential(nn.Linear(sum(self.widths), 16), nn.GELU(), nn.Linear(16, 10)).eval()

    def image_shape(self) -> tuple[int, int, int]:
        return 3, 8, 8

    def eval_images(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Random 8-bit images, normalised (every image the runtime serves is 8-bit)."""
        generator = torch.Generator().manual_seed(3)
        pixels = torch.randint(0, 256, (n, 3, 8, 8), generator=generator, dtype=torch.uint8)
        return normalize_pixels(pixels), torch.randint(0, 10, (n,), generator=generator)


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(stat.parent.name)] = (int(fields[1]), fields[0])
    return table


def _leftover_workers(wait_s: float = 2.0) -> list[int]:
    """Live processes below this one's children: workers (the fork server and multiprocessing's
    resource tracker are direct children and stay for the session by design)."""
    me = os.getpid()
    deadline = time.monotonic() + wait_s
    while True:
        table = _proc_table()
        found = []
        for pid, (ppid, state) in table.items():
            chain, parent = [], ppid
            while parent not in (0, 1, me) and parent in table:
                chain.append(parent)
                parent = table[parent][0]
            if parent == me and chain and state != "Z":
                found.append(pid)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# ------------------------------------------------------------------ stand-in tests

def test_distributed_predictions_equal_the_single_process_model():
    source = StandIn()
    images, labels = source.eval_images(23)
    reference = predict_fused(source, images).argmax(-1).tolist()
    result = serve_local(source, 23, RuntimeConfig(timeout_s=20, batch_size=4, calibrate=True))
    assert result.predictions == reference
    assert result.labels == labels.tolist()
    assert result.status == "ok" and not any(result.degraded) and not result.failed_devices
    assert [w.device for w in result.workers] == ["a", "b", "c"]
    assert result.threads.worker_threads == {"a": 1, "b": 1, "c": 1}
    assert result.workers[0].feature_dim == 13
    assert 0 < result.latency_median_s <= result.latency_p95_s <= result.latency_p99_s
    assert 0 <= result.communication_share <= 1 and result.throughput_images_per_s > 0
    calibration = result.calibration
    assert set(calibration.alone_latency_s) == {"a", "b", "c"}
    assert calibration.critical_path_s == pytest.approx(
        max(calibration.alone_latency_s.values()) + calibration.fusion_latency_s)
    assert calibration.latency_ratio == pytest.approx(
        result.latency_median_s / calibration.critical_path_s)
    assert not any(_alive(w.pid) for w in result.workers)
    assert _leftover_workers() == []


@pytest.mark.parametrize("kind", ["die", "hang"])
def test_failed_worker_is_named_within_the_timeout(tmp_path, kind):
    stamp = tmp_path / "fault"
    source = StandIn(fault=("b", kind, 5, str(stamp)))
    with pytest.raises(WorkerFailedError) as caught:
        serve_local(source, 40, RuntimeConfig(timeout_s=FAULT_TIMEOUT_S,
                                              join_timeout_s=JOIN_TIMEOUT_S))
    reported = time.time()
    failure, = caught.value.failures
    assert (failure.device, failure.rank, failure.at_image) == ("b", 2, 4)
    assert caught.value.completed_images == 4
    if kind == "die":
        assert "killed by SIGKILL" in failure.reason
        assert reported - float(stamp.read_text()) < SLACK_S
    else:
        assert f"no answer within {FAULT_TIMEOUT_S:g} s" in failure.reason
        assert reported - float(stamp.read_text()) < FAULT_TIMEOUT_S + SLACK_S
    assert _leftover_workers() == []


@pytest.mark.parametrize("kind", ["never_join", "load_error"])
def test_worker_that_never_joins_is_named(kind):
    started = time.monotonic()
    with pytest.raises(WorkerFailedError) as caught:
        serve_local(StandIn(fault=("c", kind, 0, "")), 5,
                    RuntimeConfig(timeout_s=FAULT_TIMEOUT_S, join_timeout_s=NEVER_JOIN_TIMEOUT_S))
    assert [f.device for f in caught.value.failures] == ["c"], caught.value.failures
    failure, = caught.value.failures
    assert failure.at_image is None
    if kind == "never_join":
        assert "never joined" in failure.reason
    else:
        assert "FileNotFoundError" in failure.reason
    assert time.monotonic() - started < NEVER_JOIN_TIMEOUT_S + 2 * SLACK_S
    assert _leftover_workers() == []


def test_a_device_killed_while_joining_does_not_stop_the_others():
    """One device's worker dies while loading: the others still join and serve (degraded)."""
    source = StandIn(fault=("b", "die_on_load", 0, ""))
    result = serve_local(source, 6, RuntimeConfig(timeout_s=FAULT_TIMEOUT_S,
                                                  join_timeout_s=JOIN_TIMEOUT_S, degraded=True))
    assert sorted(w.device for w in result.workers) == ["a", "c"]
    assert [(f.device, f.at_image) for f in result.failed_devices] == [("b", None)]
    assert "killed by SIGKILL" in result.failed_devices[0].reason
    assert result.degraded == [True] * 6 and result.status == "degraded"
    assert _leftover_workers() == []


def test_degraded_mode_fuses_without_the_dead_device_and_marks_it(tmp_path):
    source = StandIn(fault=("b", "die", 6, str(tmp_path / "fault")))
    result = serve_local(source, 15, RuntimeConfig(timeout_s=FAULT_TIMEOUT_S,
                                                   join_timeout_s=JOIN_TIMEOUT_S, degraded=True))
    assert result.status == "degraded"
    assert result.degraded == [False] * 5 + [True] * 10
    failure, = result.failed_devices
    assert (failure.device, failure.at_image) == ("b", 5)
    images, _ = source.eval_images(15)
    full = predict_fused(StandIn(), images).argmax(-1).tolist()
    assert result.predictions[:5] == full[:5]
    # the marked predictions are exactly the fusion head's on zeros in b's slot
    ok = StandIn()
    workers = {d: ok.load_worker(d) for d in ("a", "c")}
    with torch.no_grad():
        a, c = workers["a"](images[5:]), workers["c"](images[5:])
        features = torch.cat([a[:, :8], torch.zeros(10, 6), a[:, 8:], c], dim=-1)
        zeroed = ok.load_fusion()(features).argmax(-1).tolist()
    assert result.predictions[5:] == zeroed
    assert _leftover_workers() == []


# ------------------------------------------------------------------ a real digits deployment

def _cli_with_env(argv: list[str], env: dict[str, str]) -> None:
    """`edvit ARGV` in a process of its own with `env` set, as torchrun starts a node."""
    os.environ.update(env)
    sys.exit(cli_main(argv))


def _start_cli_process(argv: list[str], env: dict[str, str]) -> multiprocessing.Process:
    # forked from the runtime's fork server (torch already imported there): starts in ~0.1 s
    process = multiprocessing.get_context("forkserver").Process(target=_cli_with_env,
                                                                 args=(argv, env))
    process.start()
    return process


def _evaluate_predictions(deploy: Path, n: int) -> list[int]:
    from vit_ops.data import load_data
    from profiler.evaluate import evaluate_deployment

    evaluation = evaluate_deployment(deploy, load_data("digits", img_size=16), predictions=n,
                                     measure=False)
    return evaluation.predictions


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_serve_cli_on_digits_equals_edvit_evaluate(digits_deployment, capsys, engine):
    code = cli_main(["serve", str(digits_deployment), "--local", "--images", "30", "--json",
                     "--timeout", "20", "--engine", engine])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["engine"] == engine and {w["engine"] for w in result["workers"]} == {engine}
    assert result["predictions"] == _evaluate_predictions(digits_deployment, 30)
    assert len(result["workers"]) == 3 and result["status"] == "ok"
    assert set(result["threads"]["worker_threads"].values()) == {1}
    for key in ("latency_median_s", "latency_p95_s", "throughput_images_per_s",
                "communication_share"):
        assert result[key] > 0
    assert not any(_alive(w["pid"]) for w in result["workers"])


def test_worker_command_runs_a_fleet_from_torchrun_style_env(digits_deployment, capsys,
                                                             monkeypatch):
    with socket.socket() as probe:  # a free port for the store rank 0 hosts
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "4"}
    workers = [_start_cli_process(["worker", str(digits_deployment), "--timeout", "30"],
                                  {**env, "RANK": str(rank)}) for rank in (1, 2, 3)]
    try:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("RANK", "0")
        code = cli_main(["worker", str(digits_deployment), "--images", "12", "--json",
                         "--timeout", "30"])
        for worker in workers:
            worker.join(timeout=30)
    finally:
        for worker in workers:
            worker.kill()
            worker.join()
    assert code == 0
    assert [w.exitcode for w in workers] == [0, 0, 0]
    result = json.loads(capsys.readouterr().out)
    assert result["predictions"] == _evaluate_predictions(digits_deployment, 12)


class _KillOne:
    """The digits deployment with one device's worker killed mid-run (picklable)."""

    def __init__(self, inner, device: str, at: int, stamp: str) -> None:
        self.inner, self.device, self.at, self.stamp = inner, device, at, stamp
        self.name = inner.name
        self.slots, self.load_fusion = inner.slots, inner.load_fusion
        self.image_shape, self.eval_images = inner.image_shape, inner.eval_images

    def load_worker(self, device: str) -> nn.Module:
        model = self.inner.load_worker(device)
        return _Fault(model, "die", self.at, self.stamp) if device == self.device else model


def test_serve_cli_names_a_killed_digits_worker_and_exits_4(digits_deployment, tmp_path, capsys,
                                                            monkeypatch):
    import vit_ops.runtime.cli as runtime_cli

    real_open = runtime_cli.open_deployment
    monkeypatch.setattr(runtime_cli, "open_deployment", lambda path, data=None: _KillOne(
        real_open(path, data), "pi-b", 3, str(tmp_path / "fault")))
    code = cli_main(["serve", str(digits_deployment), "--local", "--images", "20",
                     "--timeout", str(FAULT_TIMEOUT_S), "--join-timeout", str(JOIN_TIMEOUT_S)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 4
    assert err[-1].startswith("edvit serve: error: fleet: device failed: pi-b (rank 2)")
    assert _leftover_workers() == []


@pytest.mark.parametrize("argv, field", [
    (["worker", "{d}", "--rank", "7", "--world-size", "4", "--master", "127.0.0.1:1"], "--rank"),
    (["worker", "{d}", "--rank", "1", "--world-size", "3", "--master", "127.0.0.1:1"],
     "--world-size"),
    (["worker", "{d}", "--rank", "1", "--world-size", "4", "--master", "nohost"], "--master"),
    (["serve", "{d}/missing", "--local"], "missing"),
    (["serve", "{d}", "--local", "--images", "0"], "--images"),
    (["serve", "{d}", "--local", "--images", "100000"], "--images"),
    (["serve", "{d}", "--local", "--http", "localhost:port"], "--http"),
    (["serve", "{d}", "--local", "--http", "70000"], "--http"),
    (["serve", "{d}", "--local", "--http", "0", "--max-batch", "0"], "--max-batch"),
    (["worker", "{d}", "--rank", "1", "--world-size", "4", "--master", "127.0.0.1:1",
      "--http", "8000"], "--http"),
    (["classify", "{d}/missing.png", "--deploy", "{d}"], "missing.png"),
])
def test_cli_bad_input_is_one_line_exit_2(digits_deployment, capsys, argv, field):
    code = cli_main([a.replace("{d}", str(digits_deployment)) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and field in err[0]


def test_the_watcher_reads_the_store_rarely_once_every_device_serves(monkeypatch):
    """While every device serves, the aggregator's watcher reads each device's generation every
    WATCH_S, not every POLL_S: on a node under a CPU quota those wake-ups slow its own worker."""
    from vit_ops.runtime import fleet as fleet_module

    reads: list[float] = []
    real = fleet_module.latest_generation

    def counted(store, rank):
        reads.append(time.monotonic())
        return real(store, rank)

    monkeypatch.setattr(fleet_module, "latest_generation", counted)
    result = serve_local(StandIn(), 8, RuntimeConfig(timeout_s=30, join_timeout_s=JOIN_TIMEOUT_S,
                                                     request_gap_s=0.25))
    assert len(result.predictions) == 8
    # the last 1.5 s of eight requests 0.25 s apart: every device has joined by then
    window = [t for t in reads if t >= reads[-1] - 1.5]
    devices = len(set(StandIn.devices))
    per_second = len(window) / 1.5
    # WATCH_S (0.5 s): about 2 reads per device and second; at POLL_S it would be 50
    assert per_second <= devices * (2 / fleet_module.WATCH_S), per_second


def test_request_gaps_are_fixed_or_jittered_by_up_to_a_period():
    """Fixed gaps lock every request to one phase of a CPU quota's period; the jitter spreads
    them over it, the same spread on every run."""
    from itertools import islice

    from vit_ops.runtime.aggregator import request_gaps

    fixed = list(islice(request_gaps(RuntimeConfig(request_gap_s=0.05)), 20))
    assert fixed == [0.05] * 20
    jittered = RuntimeConfig(request_gap_s=0.05, request_jitter_s=0.01)
    gaps = list(islice(request_gaps(jittered), 200))
    assert all(0.05 <= g < 0.06 for g in gaps)
    assert max(gaps) - min(gaps) > 0.009 and len(set(gaps)) == 200
    assert gaps == list(islice(request_gaps(jittered), 200))
    assert list(islice(request_gaps(RuntimeConfig()), 3)) == [0.0] * 3
