"""The dependency direction, enforced: planner <- vit_ops <- profiler <- the command modules.

An AST walk of every module of the three packages (imports inside functions count as much as
those at the top). `planner` imports neither torch nor `vit_ops` nor `profiler`, so a framework
can embed the planner alone; `vit_ops` never imports `profiler`. The command modules are the top
layer and may import any package; the planner's own commands (`planner/cli/`) are still held to
the planner's rule, so `edvit solve` never loads torch.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("planner", "vit_ops", "profiler")
# Top-layer modules that drive several packages (they may import anything).
COMMAND_MODULES = {"profiler.cli", "vit_ops.cli", "vit_ops.runtime.cli"}
FORBIDDEN = {
    "planner": {"torch", "torchvision", "timm", "fvcore", "safetensors", "onnx", "onnxruntime",
                "vit_ops", "profiler"},
    "vit_ops": {"profiler"},
    "profiler": set(),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_packages(path: Path) -> dict[str, int]:
    """Top-level names a module imports -> the first line that imports each."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            found.setdefault(name.split(".")[0], node.lineno)
    return found


def violations(root: Path = ROOT) -> list[str]:
    """'module:line imports X' for every import against the direction."""
    out = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            name = module_name(path) if root == ROOT else f"{package}.{path.stem}"
            if name in COMMAND_MODULES:
                continue
            for imported, line in imported_packages(path).items():
                if imported in FORBIDDEN[package]:
                    out.append(f"{name}:{line} imports {imported}")
    return out


def test_imports_follow_the_dependency_direction():
    assert violations() == []


def test_every_package_module_is_walked():
    walked = {module_name(p) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    assert {"planner.cli", "planner.cli.solve_cmd", "vit_ops.runtime.worker",
            "profiler.evaluate"} <= walked
    assert COMMAND_MODULES <= walked


@pytest.mark.parametrize("package,source,expected", [
    ("planner", "import torch\n", "torch"),
    ("planner", "def f():\n    from vit_ops.deploy import load_manifest\n", "vit_ops"),
    ("vit_ops", "from profiler.latency import measure_latency\n", "profiler"),
])
def test_the_walk_catches_a_wrong_import(tmp_path, package, source, expected):
    """The check can fail: a module importing against the direction is reported."""
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
    (tmp_path / package / "bad.py").write_text(source)
    assert violations(tmp_path) == [f"{package}.bad:{source.count(chr(10))} imports {expected}"]


def _uses(path: Path, name: str) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr == name
               for n in ast.walk(ast.parse(path.read_text(), str(path))))


def _imports_benchmark(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import) and any(a.name.startswith("torch.utils.benchmark")
                                                for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (
                (node.module or "").startswith("torch.utils.benchmark")
                or (node.module == "torch.utils" and any(a.name == "benchmark"
                                                         for a in node.names))):
            return True
    return False


def test_one_timing_method():
    """Everything edvit times (profiles, calibrate, evaluate, the runtime's serve --calibrate)
    goes through `vit_ops.timing`: no other module builds a benchmark timer or times its own
    way (the runtime used `blocked_autorange` while plans came from fixed blocks)."""
    timers, autoranges = [], []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if _imports_benchmark(path):
                timers.append(module_name(path))
            if _uses(path, "blocked_autorange") or _uses(path, "adaptive_autorange"):
                autoranges.append(module_name(path))
    assert timers == ["vit_ops.timing"] and autoranges == []
