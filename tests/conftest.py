"""Shared test data and fixtures; every test runs offline (HF_HUB_OFFLINE=1) so a stray hub call
fails at once.

`tests/` is a package (each sub-folder too), so plain `pytest` puts the repository root on
`sys.path` and test modules import `tests.conftest` for the paths below.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
PLANNING = DATA / "planning"
EXAMPLES = ROOT / "examples"

EdvitRunner = Callable[..., subprocess.CompletedProcess]


def run_edvit(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess:
    """`edvit ARGS...` in a fresh process (`python -m planner.cli`, this checkout first on the
    path), as a user runs it: exit code, stdout and stderr kept apart."""
    env = {**os.environ, **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-m", "planner.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=timeout)


@pytest.fixture
def edvit() -> EdvitRunner:
    """The `edvit` command in a subprocess (see `run_edvit`)."""
    return run_edvit
