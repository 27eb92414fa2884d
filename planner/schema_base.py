"""The two pydantic bases of every typed record edvit reads, writes or passes between modules.

`StrictModel` refuses unknown keys, so a misspelt field in a YAML or JSON file is an error that
names it rather than a value silently ignored. `FrozenModel` is also immutable (and hashable):
for values that are shared and compared, such as a model's shape and its pruned counts.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A pydantic model that forbids keys it does not define."""

    model_config = ConfigDict(extra="forbid")


class FrozenModel(StrictModel):
    """A `StrictModel` whose instances cannot change after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)
