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

from planner.profile_schema import ModelProfile
from planner.vit_shape import ViTShape

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


# ---------------------------------------------------------------- models and data shared by tests
# Imports of torch-side packages stay inside the fixtures: the planner's tests never load torch
# for the sake of this file.

TINY_DIGITS = ViTShape(arch="tiny_digits", img_size=16, patch_size=4, embed_dim=32, depth=2,
                       num_heads=4, head_dim=8, mlp_hidden=64, num_classes=10)
"""The tiny ViT the vit_ops, profiler and runtime tests train on digits (seconds per epoch)."""

VIT_S16 = ViTShape(arch="vit_small_patch16_224", img_size=224, patch_size=16, embed_dim=384,
                   depth=12, num_heads=6, head_dim=64, mlp_hidden=1536, num_classes=1000)
ANALYTIC_RATIOS = (1.0, 0.75, 0.5, 0.25)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits at 16 x 16 as train/val/test splits (`vit_ops.data`)."""
    from vit_ops.data import DIGITS, load_data

    return load_data(DIGITS, img_size=TINY_DIGITS.img_size)


@pytest.fixture(scope="session")
def trained_base_dir(tmp_path_factory, digits) -> Path:
    """The one trained tiny digits base of the session (`edvit train-base`'s layout); tests that
    need a trained model load it from here instead of training their own."""
    from vit_ops.base_model import save_base, train_base
    from vit_ops.training import FitConfig

    base = train_base(digits, TINY_DIGITS, FitConfig(epochs=15, lr=3e-3))
    return save_base(base, tmp_path_factory.mktemp("trained") / "base")


@pytest.fixture(scope="session")
def analytic_profile() -> ModelProfile:
    """ViT-S/16 variants from the closed-form costs of `profiler.analytic` (torch-free)."""
    from profiler.analytic import analytic_profile as profile_of

    return profile_of(VIT_S16, ANALYTIC_RATIOS)
