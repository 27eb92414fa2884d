"""The one reader of every YAML and JSON file edvit takes: bounded, safe, and clear when it refuses.

Every document goes through `read_document`, which refuses, each with one line naming the file:
- a missing file, a directory, something that is not a regular file (a FIFO, a device), a file it
  may not read;
- a file larger than `max_input_bytes()` (16 MiB; `EDVIT_MAX_INPUT_BYTES` raises it);
- a binary file (NUL bytes), UTF-16/32 text, bytes that are not UTF-8 (the offset is named);
- malformed YAML or JSON (line and column), YAML tags that build objects (safe loading only);
- nesting deeper than MAX_DEPTH, and documents that expand to more than MAX_NODES values (YAML
  alias bombs: anchors referenced again and again; an alias inside its own anchor).

YAML structure is checked on the parser's event stream (libyaml where available) before anything is
built, so the limits cost a fraction of the parse and nothing unbounded is ever constructed.
"""

from __future__ import annotations

import json
import os
import stat
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml

from planner.errors import InputError

DEFAULT_MAX_INPUT_BYTES = 16 * 2**20
MAX_INPUT_BYTES_ENV = "EDVIT_MAX_INPUT_BYTES"
MAX_DEPTH = 64            # nested mappings / lists; edvit's formats need fewer than 10
MAX_NODES = 2_000_000     # values after expanding aliases (a C=1000 similarity matrix is 1e6)
_SNIFF_BYTES = 8192
_BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32",
         b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16"}

_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Files read while a command runs (`planner.files.guarding_inputs`): no output may replace one.
files_read: ContextVar[set[Path] | None] = ContextVar("edvit_files_read", default=None)

Format = Literal["yaml", "json"]


def max_input_bytes() -> int:
    """The size limit of one input document (16 MiB, or `EDVIT_MAX_INPUT_BYTES`)."""
    text = os.environ.get(MAX_INPUT_BYTES_ENV)
    if text is None:
        return DEFAULT_MAX_INPUT_BYTES
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise InputError("must be a positive number of bytes", field=MAX_INPUT_BYTES_ENV,
                         value=text)
    return value


def read_yaml(path: str | Path) -> Any:
    """A YAML (or JSON, a subset) document; see the module docstring for what is refused."""
    return read_document(path, "yaml")


def read_json(path: str | Path) -> Any:
    """A JSON document; see the module docstring for what is refused."""
    return read_document(path, "json")


def read_document(path: str | Path, fmt: Format) -> Any:
    path = Path(path)
    text = read_text(path)
    if fmt == "json":
        return _parse_json(text, str(path))
    return _parse_yaml(text, str(path))


def read_text(path: Path, limit: int | None = None) -> str:
    """A regular file's UTF-8 text, at most `limit` bytes (default `max_input_bytes()`)."""
    limit = max_input_bytes() if limit is None else limit
    source = str(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InputError("file not found", file=source) from None
    except NotADirectoryError:
        raise InputError("file not found (a parent is not a directory)", file=source) from None
    except OSError as exc:
        raise InputError(f"cannot read file ({exc.strerror or exc.__class__.__name__})",
                         file=source) from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError("is a directory, expected a file", file=source)
    if not stat.S_ISREG(info.st_mode):
        raise InputError("not a regular file (a FIFO, socket or device?)", file=source)
    if info.st_size > limit:
        raise InputError(f"file is {_size(info.st_size)}, larger than the limit of {_size(limit)}"
                         f" (set {MAX_INPUT_BYTES_ENV} to raise it)", file=source)
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except PermissionError:
        raise InputError("permission denied", file=source) from None
    except OSError as exc:
        raise InputError(f"cannot read file ({exc.strerror or exc.__class__.__name__})",
                         file=source) from None
    if len(data) > limit:
        raise InputError(f"file is larger than the limit of {_size(limit)} "
                         f"(set {MAX_INPUT_BYTES_ENV} to raise it)", file=source)
    note_read(path)
    return decode_text(data, source)


def decode_text(data: bytes, source: str) -> str:
    """UTF-8 text (a UTF-8 byte-order mark is dropped); binary data and other encodings refused."""
    for bom, name in _BOMS.items():
        if data.startswith(bom):
            raise InputError(f"{name} text; save the file as UTF-8", file=source)
    if b"\x00" in data[:_SNIFF_BYTES]:
        raise InputError("binary file (NUL bytes); expected UTF-8 text", file=source)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start}",
                         file=source) from None


def path_inside(root: str | Path, relative: str, *, source: str, field: str) -> Path:
    """`root / relative`, refused when it resolves outside `root` (through '..' or a symbolic
    link): a file such as deployment.json may only name what lies inside its own folder."""
    base = Path(root).resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise InputError(f"points outside {root} (to {target})", file=source, field=field,
                         value=relative)
    return base / relative


def note_read(path: str | Path) -> None:
    """Remember `path` as an input of the running command (no output may replace it). Every
    document this reader reads is noted; readers of other files (weights) call this too."""
    seen = files_read.get()
    if seen is not None:
        seen.add(Path(path).resolve())


# -- JSON -----------------------------------------------------------------------------------------
def _parse_json(text: str, source: str) -> Any:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                         file=source) from None
    except RecursionError:
        raise InputError(f"nested deeper than {MAX_DEPTH} levels", file=source) from None
    except ValueError as exc:  # e.g. an integer literal beyond Python's digit limit
        raise InputError(f"malformed JSON: {_first_line(exc)}", file=source) from None
    _check_depth(data, source)
    return data


def _check_depth(data: Any, source: str) -> None:
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_DEPTH:
                raise InputError(f"nested deeper than {MAX_DEPTH} levels", file=source)
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)


# -- YAML -----------------------------------------------------------------------------------------
def _parse_yaml(text: str, source: str) -> Any:
    try:
        _check_yaml_structure(text, source)
        return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        raise InputError(_yaml_message(exc), file=source) from None
    except (ValueError, TypeError, OverflowError) as exc:  # a scalar the constructor cannot build
        raise InputError(f"malformed YAML: {_first_line(exc)}", file=source) from None


def _check_yaml_structure(text: str, source: str) -> None:
    """Depth, expanded size and alias cycles, from parser events (nothing is constructed)."""
    open_nodes: list[list] = []          # [anchor, expanded size so far] of each open collection
    anchored: dict[str, int] = {}        # anchor -> expanded size of its node
    total = 0
    for event in yaml.parse(text, Loader=_SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            if len(open_nodes) >= MAX_DEPTH:
                raise InputError(f"nested deeper than {MAX_DEPTH} levels", file=source)
            open_nodes.append([event.anchor, 1])  # its size reaches the parent when it closes
            total += 1
            continue
        if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            anchor, closed = open_nodes.pop()
            if anchor is not None:
                anchored[anchor] = closed
            if open_nodes:
                open_nodes[-1][1] += closed
            continue
        if isinstance(event, yaml.ScalarEvent):
            size = 1
            if event.anchor is not None:
                anchored[event.anchor] = 1
        elif isinstance(event, yaml.AliasEvent):
            if event.anchor not in anchored:
                if any(node[0] == event.anchor for node in open_nodes):
                    raise InputError(f"alias *{event.anchor} refers to its own anchor "
                                     "(a recursive structure)", file=source)
                continue  # an undefined alias: the loader names it
            size = anchored[event.anchor]
        else:
            continue
        if open_nodes:
            open_nodes[-1][1] += size
        total += size
        if total > MAX_NODES:
            raise InputError(f"the document expands to more than {MAX_NODES:,} values "
                             "(an alias bomb?)", file=source)


def _yaml_message(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or _first_line(exc) or "malformed YAML"
    return f"malformed YAML{where}: {problem}"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else exc.__class__.__name__


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"
