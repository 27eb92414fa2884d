"""`examples/embed_planner.py`: the planner embedded in another framework, run as users run it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from tests.conftest import EXAMPLES, ROOT

SCRIPT = EXAMPLES / "embed_planner.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("embed_planner", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_runs_without_torch_and_prints_both_plans():
    code = (f"import runpy, sys; runpy.run_path({str(SCRIPT)!r}, run_name='__main__'); "
            "print('torch loaded' if 'torch' in sys.modules else 'no torch')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=120, env={"PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("full-fleet: optimal") and lines[-1] == "no torch"
    assert any(line.startswith("without-") for line in lines)


def test_replanning_after_a_device_leaves_uses_only_the_devices_left():
    example = _load_example()
    before, after = example.main()
    gone = before.submodels[0].device
    for plan in (before, after):
        assert plan.status == "optimal" and plan.solver.gap == 0.0
        assert plan.solver.bound_s == plan.makespan_s
        assert sorted(c for s in plan.submodels for c in s.classes) == list(range(10))
    assert gone not in {s.device for s in after.submodels} | {after.fusion.device}
    assert {s.device for s in after.submodels} <= {d["id"] for d in example.FLEET} - {gone}
    # Fewer devices never make the optimum faster.
    assert after.makespan_s >= before.makespan_s
