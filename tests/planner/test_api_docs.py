"""The README's Python API reference covers every public name of `planner`."""

from __future__ import annotations

import re

import planner
from tests.conftest import ROOT


def test_every_public_planner_name_is_in_the_readme_api_reference():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Python API"):]
    section = section[:section.index("\n## ", 1)]
    documented = set(re.findall(r"`([A-Za-z_]+)[(`]", section))
    assert set(planner.__all__) - documented == set()
