"""Loading model profiles: a file from `edvit profile`, or the built-in ones for timm's ViTs.

Built-in profiles (`planner/data/profiles/<arch>.json`) are written by `python -m profiler.builtin`
(FLOPs with fvcore, memory, counts per ratio) and shipped as data, so the planner needs no torch.
"""

from __future__ import annotations

from pathlib import Path

from planner.errors import InputError, ProfileMismatchError
from planner.reader import read_json
from planner.profile_schema import PROFILE_SCHEMA_VERSION, ModelProfile
from planner.validation import validate_document

BUILTIN_DIR = Path(__file__).parent / "data" / "profiles"


def builtin_archs() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.json"))


def load_profile(path: str | Path) -> ModelProfile:
    data = read_json(path)
    if not isinstance(data, dict):
        raise InputError("expected a JSON object", file=str(path))
    version = data.get("schema_version")
    if version != PROFILE_SCHEMA_VERSION:
        raise ProfileMismatchError(
            f"profile schema version {version!r} is not supported (expected "
            f"{PROFILE_SCHEMA_VERSION}); re-run `edvit profile`", file=str(path),
            field="schema_version", value=version)
    return validate_document(ModelProfile, data, str(path))


def builtin_profile(arch: str, *, source: str | None = None) -> ModelProfile:
    path = BUILTIN_DIR / f"{arch}.json"
    if not path.exists():
        raise InputError(
            f"no built-in profile for this arch (built in: {', '.join(builtin_archs())}); "
            "run `edvit profile` and pass the file as model.profile or --profile",
            file=source, field="model.arch", value=arch)
    return load_profile(path)
