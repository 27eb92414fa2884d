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


# -- outputs never replace inputs, also inside input folders and interrupted runs' directories --
def test_an_existing_file_inside_an_input_folder_is_never_an_output(tmp_path):
    from planner.errors import InputError
    from planner.files import check_output

    folder = tmp_path / "base"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(InputError, match="inside the input folder"):
        check_output(folder / "model.safetensors", inputs=[folder])
    check_output(folder / "new.yaml", inputs=[folder])  # a new file beside the inputs is fine


def test_a_partial_directory_that_is_a_link_or_a_file_is_refused_untouched(tmp_path):
    from planner.errors import InputError
    from planner.files import partial_dir, resumable_directory

    target = tmp_path / "deploy"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("mine")
    partial_dir(target).symlink_to(foreign)
    for resume in (False, True):
        with pytest.raises(InputError, match="not the directory of an interrupted"):
            with resumable_directory(target, resume):
                pass
    assert (foreign / "mine.txt").read_text() == "mine"
    partial_dir(target).unlink()
    partial_dir(target).write_text("a file of the user's")
    with pytest.raises(InputError, match="not the directory of an interrupted"):
        with resumable_directory(target, False):
            pass
    assert partial_dir(target).read_text() == "a file of the user's"


def test_a_partial_directory_holding_an_input_is_refused(tmp_path):
    from planner.errors import InputError
    from planner.files import guarding_inputs, partial_dir, resumable_directory
    from planner.reader import note_read

    target = tmp_path / "deploy"
    base = partial_dir(target) / "base"
    base.mkdir(parents=True)
    (base / "model.safetensors").write_bytes(b"weights")
    with guarding_inputs():
        note_read(base / "model.safetensors")
        with pytest.raises(InputError, match="would overwrite the input"):
            with resumable_directory(target, False):
                pass
    assert (base / "model.safetensors").read_bytes() == b"weights"
