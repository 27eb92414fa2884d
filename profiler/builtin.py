"""Regenerate the built-in profiles the planner ships: `python -m profiler.builtin [ARCH ...]`.

One file per timm ViT, `planner/data/profiles/<arch>.json`, with num_classes=1000 and the default
keep ratios (`planner.profile_schema.DEFAULT_RATIOS`): counts, MACs/FLOPs and memory, no latency (latency is a device
property, see `edvit calibrate`). The files are deterministic for given tool versions, so a test
checks that the shipped ones equal a fresh computation.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from planner.files import write_json_atomic
from planner.profile_schema import DEFAULT_RATIOS, ModelProfile
from planner.profiles import BUILTIN_DIR
from profiler.model_profile import ProgressCallback, profile_model
from vit_ops.shapes import BUILTIN_PROFILE_ARCHS, shape_for_arch

BUILTIN_NUM_CLASSES = 1000

logger = logging.getLogger(__name__)


def builtin_profile_for(arch: str, progress: ProgressCallback | None = None) -> ModelProfile:
    """The built-in profile of `arch`, computed now (no cache)."""
    shape = shape_for_arch(arch, BUILTIN_NUM_CLASSES)
    return profile_model(shape, DEFAULT_RATIOS, cache=None, progress=progress)


def write_builtin_profiles(archs: list[str] | None = None, directory: Path = BUILTIN_DIR
                           ) -> list[Path]:
    """Compute and write `<directory>/<arch>.json` for each arch (default: all supported)."""
    written = []
    for arch in archs or BUILTIN_PROFILE_ARCHS:
        path = directory / f"{arch}.json"
        write_json_atomic(path, builtin_profile_for(arch).model_dump(mode="json"))
        logger.info("wrote %s", path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archs", nargs="*", metavar="ARCH",
                        help=f"default: all of {', '.join(BUILTIN_PROFILE_ARCHS)}")
    parser.add_argument("--dir", type=Path, default=BUILTIN_DIR, help="output directory")
    args = parser.parse_args(argv)
    unknown = [arch for arch in args.archs if arch not in BUILTIN_PROFILE_ARCHS]
    if unknown:
        parser.error(f"unknown arch {unknown[0]!r}; supported: {', '.join(BUILTIN_PROFILE_ARCHS)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    write_builtin_profiles(args.archs or None, args.dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
