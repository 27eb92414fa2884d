"""Shared fixtures; every test runs offline (HF_HUB_OFFLINE=1) so a stray hub call fails at once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = Path(__file__).parent / "data"
PLANNING = DATA / "planning"


@pytest.fixture
def planning_dir() -> Path:
    return PLANNING
