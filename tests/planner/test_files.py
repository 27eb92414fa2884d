"""Outputs are written whole or not at all, as ordinary files and folders."""

from __future__ import annotations

import os
import stat

import pytest

from planner.files import staged_directory, write_text_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_staged_directory_replaces_the_old_one_only_on_success(tmp_path):
    target = tmp_path / "deploy"
    target.mkdir()
    (target / "old.txt").write_text("kept until the new one is complete")
    with pytest.raises(RuntimeError):
        with staged_directory(target) as staging:
            (staging / "half.txt").write_text("half")
            raise RuntimeError("the build failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy"]  # no staging left behind
    assert [p.name for p in target.iterdir()] == ["old.txt"]

    with staged_directory(target) as staging:
        assert not (staging / "old.txt").exists()
        write_text_atomic(staging / "new.txt", "complete")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy"]
    assert [p.name for p in target.iterdir()] == ["new.txt"]


def test_outputs_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with staged_directory(tmp_path / "out") as staging:
            write_text_atomic(staging / "plan.json", "{}")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "out") == 0o755
    assert _mode(tmp_path / "out" / "plan.json") == 0o644
