"""The one reader of YAML and JSON: every hostile file is one InputError naming the file."""

from __future__ import annotations

import os

import pytest

from planner.errors import InputError
from planner.reader import MAX_DEPTH, MAX_INPUT_BYTES_ENV, MAX_NODES, read_json, read_yaml


def _refusal(reader, path) -> str:
    with pytest.raises(InputError) as info:
        reader(path)
    assert info.value.file == str(path)
    return info.value.one_line()


@pytest.mark.parametrize("reader", [read_yaml, read_json])
def test_missing_directory_and_special_files_each_have_their_own_message(tmp_path, reader):
    assert "file not found" in _refusal(reader, tmp_path / "absent.yaml")
    assert "is a directory" in _refusal(reader, tmp_path)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert "not a regular file" in _refusal(reader, fifo)  # and it does not block


@pytest.mark.parametrize("reader", [read_yaml, read_json])
def test_binary_and_other_encodings_are_named(tmp_path, reader):
    binary = tmp_path / "weights.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    assert "binary file" in _refusal(reader, binary)
    utf16 = tmp_path / "utf16.json"
    utf16.write_text('{"a": 1}', encoding="utf-16")
    assert "UTF-16 text" in _refusal(reader, utf16)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes('name: "caf\xe9"'.encode("latin-1"))
    assert "not UTF-8 text: byte 0xe9 at offset 10" in _refusal(reader, latin1)


def test_utf8_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes("\ufeffname: x\n".encode("utf-8"))
    assert read_yaml(path) == {"name": "x"}


def test_size_limit_and_its_override(tmp_path, monkeypatch):
    path = tmp_path / "big.json"
    path.write_text("[" + "0," * 600_000 + "0]")
    monkeypatch.setenv(MAX_INPUT_BYTES_ENV, "1000000")
    message = _refusal(read_json, path)
    assert "larger than the limit" in message and MAX_INPUT_BYTES_ENV in message
    monkeypatch.setenv(MAX_INPUT_BYTES_ENV, "2000000")
    assert len(read_json(path)) == 600_001


@pytest.mark.parametrize("reader,text", [
    (read_json, "[" * 3000 + "]" * 3000),
    (read_yaml, "[" * 3000 + "]" * 3000),
    (read_yaml, "".join(f"{'  ' * i}k{i}:\n" for i in range(200)) + "  " * 200 + "v: 1\n"),
    (read_json, "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)),
])
def test_deep_nesting_is_refused_before_recursion(tmp_path, reader, text):
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    message = _refusal(reader, path)  # ours, or libyaml's own limit of 1000 levels
    assert f"nested deeper than {MAX_DEPTH} levels" in message or "nesting depth" in message


def test_nesting_at_the_limit_is_read(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    assert read_yaml(path) is not None


def test_alias_bombs_and_recursive_aliases_are_refused(tmp_path):
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    bomb = tmp_path / "laughs.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    assert f"expands to more than {MAX_NODES:,} values" in _refusal(read_yaml, bomb)
    loop = tmp_path / "loop.yaml"
    loop.write_text("a: &x [1, *x]\n")
    assert "refers to its own anchor" in _refusal(read_yaml, loop)


def test_anchors_within_limits_still_work(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text("base: &b {kind: pi4b-4gb, count: 2}\ndevices: [*b, *b]\n")
    assert read_yaml(path)["devices"] == [{"kind": "pi4b-4gb", "count": 2}] * 2


@pytest.mark.parametrize("text,fragment", [
    ("a: !!python/object/apply:os.system ['true']\n", "malformed YAML"),
    ("a: [1, 2\n", "malformed YAML at line 2"),
    ("a: 1\n---\nb: 2\n", "malformed YAML"),
    ("a: *nowhere\n", "malformed YAML"),
    ("a: " + "9" * 5000 + "\n", "a"),  # a long int stays a value: the types bound it
])
def test_unsafe_or_malformed_yaml_is_one_error(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    try:
        read_yaml(path)
    except InputError as exc:
        assert fragment in exc.one_line()


def test_malformed_json_names_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "a": 1,\n  "b": }\n')
    assert "malformed JSON at line 3, column 8" in _refusal(read_json, path)
    huge = tmp_path / "huge_int.json"
    huge.write_text('{"a": ' + "9" * 5000 + "}")
    assert "malformed JSON" in _refusal(read_json, huge)
